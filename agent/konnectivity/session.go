package konnectivity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
	"sigs.k8s.io/apiserver-network-proxy/proto/agent"
)

// Header names, as gRPC puts them on the wire (lower case).
const (
	hdrAgentID          = "agentid"
	hdrAgentIdentifiers = "agentidentifiers"
	hdrServerID         = "serverid"
	hdrServerCount      = "servercount"
)

// session is one AgentService.Connect stream and the connections
// proxied through it.
type session struct {
	c        *Client
	ctx      context.Context // done when the stream is torn down
	cancel   context.CancelFunc
	cc       *grpc.ClientConn
	stream   agent.AgentService_ConnectClient
	serverID string
	count    int      // servercount the server announced
	certID   [32]byte // SHA-256 of the client certificate used
	started  time.Time
	log      *slog.Logger

	drainReq  chan struct{} // closed by startDrain
	drainOnce sync.Once

	sendMu sync.Mutex // serialises stream.Send

	mu      sync.Mutex                   // guards conns, pending
	conns   map[int64]*endpoint          // by connectID
	pending map[int64]context.CancelFunc // dials in progress, by random
	idle    chan struct{}                // signalled when conns becomes empty

	wg sync.WaitGroup // dial, read and write goroutines
}

// connect opens one stream with cert and reads the server's response
// headers. The caller either serves the session or aborts it.
func (c *Client) connect(cert *tls.Certificate, certID [32]byte) (*session, error) {
	tc, err := c.tlsConfig(cert)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(c.cfg.Server,
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("grpc client: %w", err)
	}
	// The stream's context is not Run's: on shutdown the stream must stay
	// up to carry DRAIN and the last bytes of open connections.
	sctx, cancel := context.WithCancel(context.Background())
	fail := func(err error) (*session, error) {
		cancel()
		cc.Close()
		return nil, err
	}
	md := metadata.Pairs(hdrAgentID, c.cfg.AgentID, hdrAgentIdentifiers, c.identifiers())
	connectTimer := time.AfterFunc(c.cfg.DialTimeout, cancel)
	stream, err := agent.NewAgentServiceClient(cc).Connect(metadata.NewOutgoingContext(sctx, md))
	if err != nil {
		connectTimer.Stop()
		return fail(fmt.Errorf("connect: %w", err))
	}
	hdr, err := stream.Header()
	if !connectTimer.Stop() {
		return fail(fmt.Errorf("connect: no response headers within %v", c.cfg.DialTimeout))
	}
	if err != nil {
		return fail(fmt.Errorf("read response headers: %w", err))
	}
	serverID := first(hdr.Get(hdrServerID))
	count, _ := strconv.Atoi(first(hdr.Get(hdrServerCount)))
	return &session{
		c: c, ctx: sctx, cancel: cancel, cc: cc, stream: stream,
		serverID: serverID, count: max(count, 1), certID: certID, started: time.Now(),
		log:      c.log.With("serverID", serverID),
		drainReq: make(chan struct{}),
		conns:    map[int64]*endpoint{},
		pending:  map[int64]context.CancelFunc{},
		idle:     make(chan struct{}, 1),
	}, nil
}

// abort closes a stream that is not served (a duplicate serverID).
func (s *session) abort() {
	s.cancel()
	s.cc.Close()
}

// startDrain asks serve to send DRAIN and end the stream once its
// connections have ended (at most StopTimeout later).
func (s *session) startDrain() { s.drainOnce.Do(func() { close(s.drainReq) }) }

// serve runs the stream until it breaks or it has drained. All its
// goroutines have ended when it returns.
func (s *session) serve() error {
	c := s.c
	c.connected.Add(1)
	c.m.connected.Inc()
	defer func() { c.connected.Add(-1); c.m.connected.Dec() }()
	s.log.Info("konnectivity stream up", "serverCount", s.count)

	recvDone := make(chan error, 1)
	go s.recvLoop(recvDone)
	var err error
	select {
	case err = <-recvDone:
		recvDone = nil
	case <-s.drainReq:
		if e, ended := s.drain(recvDone); ended {
			err, recvDone = e, nil
		}
	}
	s.cancel()
	s.closeAll()
	// The receive loop starts dial goroutines (wg.Add): it must have ended
	// before Wait, or a dial could start after Wait returned.
	if recvDone != nil {
		<-recvDone
	}
	s.wg.Wait()
	s.cc.Close()
	s.log.Info("konnectivity stream down", "err", err)
	return err
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// drain sends DRAIN so the server stops choosing this stream, then waits
// up to StopTimeout for open connections to end. ended reports that the
// stream broke meanwhile (err is why).
func (s *session) drain(recvDone chan error) (err error, ended bool) {
	s.log.Info("draining konnectivity stream")
	if err := s.send(&client.Packet{Type: client.PacketType_DRAIN, Payload: &client.Packet_Drain{Drain: &client.Drain{}}}); err != nil {
		return nil, false
	}
	t := time.NewTimer(s.c.cfg.StopTimeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns) + len(s.pending)
		s.mu.Unlock()
		if n == 0 {
			return nil, false
		}
		select {
		case <-s.idle:
		case err := <-recvDone:
			return err, true
		case <-t.C:
			return nil, false
		case <-time.After(50 * time.Millisecond): // pending dials do not signal idle
		}
	}
}

func (s *session) send(p *client.Packet) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(p)
}

// recvLoop dispatches the server's packets until the stream breaks.
func (s *session) recvLoop(done chan<- error) {
	for {
		p, err := s.stream.Recv()
		if err != nil {
			done <- err
			return
		}
		switch p.Type {
		case client.PacketType_DIAL_REQ:
			req := p.GetDialRequest()
			if req == nil {
				continue
			}
			dctx, cancel := context.WithTimeout(s.ctx, s.c.cfg.DialTimeout)
			s.mu.Lock()
			s.pending[req.Random] = cancel
			s.mu.Unlock()
			s.wg.Add(1)
			go s.dial(dctx, cancel, req)
		case client.PacketType_DATA:
			d := p.GetData()
			if d == nil {
				continue
			}
			if ep := s.lookup(d.ConnectID); ep != nil {
				ep.enqueue(d.Data)
			} else {
				_ = s.send(closeRsp(d.ConnectID, "unrecognized connectID"))
			}
		case client.PacketType_CLOSE_REQ:
			id := p.GetCloseRequest().GetConnectID()
			if ep := s.lookup(id); ep != nil {
				ep.close(true, "")
			} else {
				_ = s.send(closeRsp(id, "unknown connectID"))
			}
		case client.PacketType_DIAL_CLS:
			random := p.GetCloseDial().GetRandom()
			s.mu.Lock()
			cancel := s.pending[random]
			s.mu.Unlock()
			if cancel != nil {
				cancel()
			}
		default:
			s.c.log.Debug("ignoring konnectivity packet", "type", p.Type.String())
		}
	}
}

func (s *session) lookup(id int64) *endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[id]
}

func closeRsp(id int64, msg string) *client.Packet {
	return &client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{
		CloseResponse: &client.CloseResponse{ConnectID: id, Error: msg}}}
}

func dialRsp(random, id int64, msg string) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{
		DialResponse: &client.DialResponse{Random: random, ConnectID: id, Error: msg}}}
}

// dial answers one DIAL_REQ: allowlist, dial within DialTimeout, then
// DIAL_RSP with a connectID or an error.
func (s *session) dial(ctx context.Context, cancel context.CancelFunc, req *client.DialRequest) {
	defer s.wg.Done()
	defer cancel()
	defer func() {
		s.mu.Lock()
		delete(s.pending, req.Random)
		s.mu.Unlock()
	}()
	refuse := func(reason string, err error) {
		s.c.m.refusals.WithLabelValues(reason).Inc()
		s.c.log.Info("konnectivity dial refused", "address", req.Address, "reason", reason, "err", err)
		_ = s.send(dialRsp(req.Random, 0, err.Error()))
	}
	if req.Protocol != "tcp" {
		refuse("bad_target", fmt.Errorf("protocol %q is not supported", req.Protocol))
		return
	}
	addrs, err := s.c.destinations(ctx, req.Address)
	if err != nil {
		refuse("not_allowed", err)
		return
	}
	var conn net.Conn
	for _, a := range addrs {
		if conn, err = s.c.dialContext(ctx, "tcp", a.String()); err == nil {
			break
		}
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.Canceled) && s.ctx.Err() == nil {
			refuse("cancelled", fmt.Errorf("dial %s cancelled by DIAL_CLS", req.Address))
		} else {
			refuse("dial_failed", fmt.Errorf("dial %s: %w", req.Address, err))
		}
		return
	}
	id := s.c.nextID.Add(1)
	ep := &endpoint{s: s, id: id, conn: conn, in: make(chan []byte, 16), done: make(chan struct{})}
	s.mu.Lock()
	if ctx.Err() != nil { // DIAL_CLS or teardown after the dial succeeded
		s.mu.Unlock()
		conn.Close()
		refuse("cancelled", fmt.Errorf("dial %s cancelled", req.Address))
		return
	}
	s.conns[id] = ep
	s.mu.Unlock()
	s.c.m.conns.Inc()
	if err := s.send(dialRsp(req.Random, id, "")); err != nil {
		ep.close(false, "")
		return
	}
	s.wg.Add(2)
	go ep.readLoop()
	go ep.writeLoop()
}

// closeAll closes every connection without telling the server: the
// stream is going away.
func (s *session) closeAll() {
	s.mu.Lock()
	eps := make([]*endpoint, 0, len(s.conns))
	for _, ep := range s.conns {
		eps = append(eps, ep)
	}
	for _, cancel := range s.pending {
		cancel()
	}
	s.mu.Unlock()
	for _, ep := range eps {
		ep.close(false, "")
	}
}

// endpoint is one proxied connection to a destination.
type endpoint struct {
	s    *session
	id   int64
	conn net.Conn
	in   chan []byte   // DATA from the server, written by writeLoop
	done chan struct{} // closed by close
	once sync.Once
}

// enqueue hands DATA to writeLoop; it blocks while the queue is full,
// which stalls the whole stream as in the stock agent.
func (e *endpoint) enqueue(b []byte) {
	select {
	case e.in <- b:
	case <-e.done:
	}
}

// close ends the connection once; tell sends CLOSE_RSP to the server.
func (e *endpoint) close(tell bool, msg string) {
	e.once.Do(func() {
		s := e.s
		s.mu.Lock()
		delete(s.conns, e.id)
		empty := len(s.conns) == 0
		s.mu.Unlock()
		close(e.done)
		e.conn.Close()
		s.c.m.conns.Dec()
		if tell {
			_ = s.send(closeRsp(e.id, msg))
		}
		if empty {
			select {
			case s.idle <- struct{}{}:
			default:
			}
		}
	})
}

// readLoop sends what the destination writes as DATA, ReadSize bytes at
// most per packet, and CLOSE_RSP when it ends.
func (e *endpoint) readLoop() {
	defer e.s.wg.Done()
	buf := make([]byte, e.s.c.cfg.ReadSize)
	out := e.s.c.m.bytes.WithLabelValues("out")
	for {
		n, err := e.conn.Read(buf)
		if n > 0 {
			// Send marshals the packet before it returns, so buf is reusable.
			if serr := e.s.send(&client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{
				Data: &client.Data{ConnectID: e.id, Data: buf[:n]}}}); serr != nil {
				e.close(false, "")
				return
			}
			out.Add(float64(n))
		}
		if err != nil {
			e.close(true, "")
			return
		}
	}
}

// writeLoop writes DATA from the server to the destination.
func (e *endpoint) writeLoop() {
	defer e.s.wg.Done()
	in := e.s.c.m.bytes.WithLabelValues("in")
	for {
		select {
		case b := <-e.in:
			if _, err := e.conn.Write(b); err != nil {
				e.close(true, err.Error())
				return
			}
			in.Add(float64(len(b)))
		case <-e.done:
			return
		}
	}
}
