package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	konnectivity "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// maxPacket bounds a Konnectivity packet from a frontend. The client
// library sends one DATA packet per Write, so this is generous.
const maxPacket = 16 << 20

// ServeKonnectivity serves Konnectivity's gRPC frontend,
// /ProxyService/Proxy, on ln until ctx is done, so that kube-apiserver's
// egress selector (proxyProtocol GRPC) and the konnectivity-client
// library reach nodes through the agents' tunnels. With useTLS the
// clients must present a certificate of the cluster CA that
// Config.AuthorizeFrontend admits; without, ln should be a UNIX socket
// (see ListenSocket), whose users are trusted. It returns after every
// stream has ended; pass it the same ctx as Run.
//
// Each DIAL_REQ becomes one DialNode; its DIAL_RSP carries a connectID
// unique within the gRPC stream, or the error. DATA goes both ways, the
// agent's end of a connection is answered with CLOSE_RSP, a CLOSE_REQ
// closes it, and DIAL_CLS cancels a dial in flight.
func (s *Server) ServeKonnectivity(ctx context.Context, ln net.Listener, useTLS bool) error {
	opts := []grpc.ServerOption{
		grpc.WaitForHandlers(true),
		grpc.MaxRecvMsgSize(maxPacket),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.KeepAlive, Timeout: s.cfg.PingTimeout}),
	}
	if useTLS {
		cfg := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{*s.cfg.Certificate},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    s.cfg.ClientCAs,
			NextProtos:   []string{"h2"},
			Time:         s.clock.Now,
		}
		if s.cfg.LiveTLS != nil {
			cfg = s.cfg.LiveTLS(cfg)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	gs := grpc.NewServer(opts...)
	konnectivity.RegisterProxyServiceServer(gs, &proxyService{s: s, tls: useTLS})
	stop := context.AfterFunc(ctx, gs.Stop)
	defer stop()
	err := gs.Serve(ln)
	gs.Stop() // returns once every handler has
	if err != nil && ctx.Err() == nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("konnectivity frontend: %w", err)
	}
	return nil
}

// proxyService implements konnectivity.ProxyServiceServer.
type proxyService struct {
	konnectivity.UnimplementedProxyServiceServer
	s   *Server
	tls bool
}

// Proxy serves one frontend stream, which may carry several connections.
func (p *proxyService) Proxy(stream konnectivity.ProxyService_ProxyServer) error {
	ctx := stream.Context()
	if p.tls {
		if err := p.authorize(ctx); err != nil {
			p.s.m.dialFailures.WithLabelValues("forbidden").Inc()
			p.s.log.Warn("konnectivity frontend: stream refused", "reason", "forbidden", "err", err)
			return status.Error(codes.PermissionDenied, err.Error())
		}
	}
	ps := &proxyStream{s: p.s, stream: stream, pending: map[int64]context.CancelFunc{}, conns: map[int64]*proxyConn{}}
	return ps.run(ctx)
}

func (p *proxyService) authorize(ctx context.Context) error {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return errors.New("no peer information")
	}
	ti, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return errors.New("a client certificate is required")
	}
	return p.s.cfg.AuthorizeFrontend(ti.State.PeerCertificates[0])
}

// proxyStream is one ProxyService.Proxy stream.
type proxyStream struct {
	s      *Server
	stream konnectivity.ProxyService_ProxyServer

	sendMu sync.Mutex // serializes stream.Send

	mu      sync.Mutex                   // guards pending, conns, nextID, closed
	pending map[int64]context.CancelFunc // dials in flight, by random
	conns   map[int64]*proxyConn         // by connectID
	nextID  int64
	closed  bool

	wg sync.WaitGroup // dials and agent-to-frontend copies
}

// proxyConn is one connection of a stream.
type proxyConn struct {
	id   int64
	conn net.Conn
	once sync.Once // ends the connection, with one CLOSE_RSP
}

// run reads the frontend's packets until the stream ends, then closes the
// stream's connections and waits for its goroutines.
func (ps *proxyStream) run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, ps.closeAll) // unblocks a DATA write
	defer func() {
		stop()
		ps.closeAll()
		ps.wg.Wait()
	}()
	for {
		pkt, err := ps.stream.Recv()
		if err != nil {
			if err == io.EOF || ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch pkt.GetType() {
		case konnectivity.PacketType_DIAL_REQ:
			if req := pkt.GetDialRequest(); req != nil {
				ps.dial(ctx, req)
			}
		case konnectivity.PacketType_DATA:
			if d := pkt.GetData(); d != nil {
				ps.data(d)
			}
		case konnectivity.PacketType_CLOSE_REQ:
			if c := pkt.GetCloseRequest(); c != nil {
				ps.closeRequest(c.GetConnectID())
			}
		case konnectivity.PacketType_DIAL_CLS:
			if c := pkt.GetCloseDial(); c != nil {
				ps.cancelDial(c.GetRandom())
			}
		default:
			ps.s.log.Debug("konnectivity frontend: packet ignored", "type", pkt.GetType().String())
		}
	}
}

// dial starts a DialNode for req and answers DIAL_RSP when it is done.
func (ps *proxyStream) dial(ctx context.Context, req *konnectivity.DialRequest) {
	random, address := req.GetRandom(), req.GetAddress()
	fail := func(reason string, err error) {
		ps.s.m.dialFailures.WithLabelValues(reason).Inc()
		ps.s.log.Warn("konnectivity frontend: dial failed", "target", address, "reason", reason, "err", err)
		ps.send(&konnectivity.Packet{Type: konnectivity.PacketType_DIAL_RSP, Payload: &konnectivity.Packet_DialResponse{
			DialResponse: &konnectivity.DialResponse{Random: random, Error: err.Error()}}})
	}
	if p := req.GetProtocol(); p != "tcp" && p != "" {
		fail("bad_request", fmt.Errorf("protocol %q is not supported, only tcp", p))
		return
	}
	node, err := ps.s.NodeFor(address)
	if err != nil {
		reason := "no_tunnel"
		if errors.Is(err, ErrBadTarget) {
			reason = "bad_request"
		}
		fail(reason, err)
		return
	}
	dctx, cancel := context.WithCancel(ctx)
	ps.mu.Lock()
	if _, dup := ps.pending[random]; dup || ps.closed {
		ps.mu.Unlock()
		cancel()
		fail("bad_request", fmt.Errorf("dial %d is already in flight", random))
		return
	}
	ps.pending[random] = cancel
	ps.mu.Unlock()
	ps.wg.Go(func() {
		defer cancel()
		c, err := ps.s.DialNode(dctx, node, address)
		ps.mu.Lock()
		_, wanted := ps.pending[random]
		delete(ps.pending, random)
		var pc *proxyConn
		if err == nil && wanted && !ps.closed {
			ps.nextID++
			pc = &proxyConn{id: ps.nextID, conn: c}
			ps.conns[pc.id] = pc
		}
		ps.mu.Unlock()
		switch {
		case pc != nil:
		case err == nil || !wanted:
			if c != nil {
				c.Close()
			}
			ps.s.m.dialFailures.WithLabelValues("cancelled").Inc()
			ps.s.log.Debug("konnectivity frontend: dial cancelled", "target", address)
			return
		default:
			fail(dialFailureReason(err), err)
			return
		}
		if ps.send(&konnectivity.Packet{Type: konnectivity.PacketType_DIAL_RSP, Payload: &konnectivity.Packet_DialResponse{
			DialResponse: &konnectivity.DialResponse{Random: random, ConnectID: pc.id}}}) != nil {
			ps.end(pc, "")
			return
		}
		ps.pump(pc)
	})
}

// dialFailureReason is the metric label of a failed DialNode.
func dialFailureReason(err error) string {
	var refused *RefusedError
	switch {
	case errors.As(err, &refused):
		return "agent_refused"
	case errors.Is(err, ErrNoTunnel):
		return "no_tunnel"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	default:
		return "agent_error"
	}
}

// pump sends what the agent sends on pc to the frontend as DATA, then
// ends pc.
func (ps *proxyStream) pump(pc *proxyConn) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	counter := ps.s.m.bytes.WithLabelValues("from_agent")
	msg := ""
	for {
		n, err := pc.conn.Read(buf)
		if n > 0 {
			// gRPC may keep the message after Send returns, so each
			// packet gets its own copy.
			data := append([]byte(nil), buf[:n]...)
			if ps.send(&konnectivity.Packet{Type: konnectivity.PacketType_DATA, Payload: &konnectivity.Packet_Data{
				Data: &konnectivity.Data{ConnectID: pc.id, Data: data}}}) != nil {
				break
			}
			counter.Add(float64(n))
		}
		if err != nil {
			if err != io.EOF {
				msg = err.Error()
			}
			break
		}
	}
	ps.end(pc, msg)
}

// data writes a frontend's DATA to its connection.
func (ps *proxyStream) data(d *konnectivity.Data) {
	ps.mu.Lock()
	pc := ps.conns[d.GetConnectID()]
	ps.mu.Unlock()
	if pc == nil {
		ps.closeResponse(d.GetConnectID(), "unrecognized connectID")
		return
	}
	n, err := pc.conn.Write(d.GetData())
	ps.s.m.bytes.WithLabelValues("to_agent").Add(float64(n))
	if err != nil {
		ps.end(pc, err.Error())
	}
}

// closeRequest ends a connection on the frontend's CLOSE_REQ.
func (ps *proxyStream) closeRequest(id int64) {
	ps.mu.Lock()
	pc := ps.conns[id]
	ps.mu.Unlock()
	if pc == nil {
		ps.closeResponse(id, "unrecognized connectID")
		return
	}
	ps.end(pc, "")
}

// cancelDial cancels a dial in flight on the frontend's DIAL_CLS.
func (ps *proxyStream) cancelDial(random int64) {
	ps.mu.Lock()
	cancel := ps.pending[random]
	delete(ps.pending, random)
	ps.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// end closes pc and answers CLOSE_RSP, once.
func (ps *proxyStream) end(pc *proxyConn, msg string) {
	pc.once.Do(func() {
		ps.mu.Lock()
		delete(ps.conns, pc.id)
		ps.mu.Unlock()
		pc.conn.Close()
		ps.closeResponse(pc.id, msg)
	})
}

func (ps *proxyStream) closeResponse(id int64, msg string) {
	ps.send(&konnectivity.Packet{Type: konnectivity.PacketType_CLOSE_RSP, Payload: &konnectivity.Packet_CloseResponse{
		CloseResponse: &konnectivity.CloseResponse{ConnectID: id, Error: msg}}})
}

// closeAll cancels the dials in flight and closes every connection; the
// stream takes no new ones after it.
func (ps *proxyStream) closeAll() {
	ps.mu.Lock()
	ps.closed = true
	pending, conns := ps.pending, ps.conns
	ps.pending, ps.conns = map[int64]context.CancelFunc{}, map[int64]*proxyConn{}
	ps.mu.Unlock()
	for _, cancel := range pending {
		cancel()
	}
	for _, pc := range conns {
		pc.once.Do(func() { pc.conn.Close() })
	}
}

func (ps *proxyStream) send(pkt *konnectivity.Packet) error {
	ps.sendMu.Lock()
	defer ps.sendMu.Unlock()
	return ps.stream.Send(pkt)
}
