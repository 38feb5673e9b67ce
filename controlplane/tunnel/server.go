// Package tunnel is the control-plane end of nodetrust's reverse tunnels.
// Agents dial its TLS port with their node client certificates (ALPN
// tunnelwire.ALPN); the server then acts as the HTTP/2 client on each
// connection and opens one CONNECT stream per proxied TCP connection.
// Frontends reach a node with HTTP/1.1 CONNECT to <node-name>:<port> or
// <node-ip>:<port>, over mutual TLS on the same port (any other ALPN) or
// over a UNIX socket, or with Konnectivity's gRPC ProxyService
// (ServeKonnectivity); other frontends can call NodeFor and DialNode.
package tunnel

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"

	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// ErrConfig is wrapped by every error about a Config.
var ErrConfig = errors.New("invalid tunnel server configuration")

// Config configures a Server. Zero durations take the documented defaults.
type Config struct {
	// Certificate is the TLS serving certificate of the tunnel port (the
	// API server's pair fits: agents check it against the cluster CA).
	Certificate *tls.Certificate
	// ClientCAs holds the cluster CA; agents and TLS frontends must present
	// client certificates that chain to it.
	ClientCAs *x509.CertPool
	// AuthorizeFrontend decides whether a TLS frontend client may open
	// streams (default DefaultAuthorizeFrontend). UNIX-socket clients are
	// trusted: the socket is mode 0600.
	AuthorizeFrontend func(*x509.Certificate) error
	// LiveTLS, when set, wraps every TLS configuration the server builds
	// from Certificate and ClientCAs, so that both can change while it
	// runs (CA rotation; see docs/rotation.md).
	LiveTLS func(*tls.Config) *tls.Config
	// NodeForIP names the node that owns an IP address, for frontend
	// targets <ip>:<port> (the control plane passes the instance
	// registry's); nil means only tunnels' source addresses are used. See
	// NodeFor.
	NodeForIP func(netip.Addr) (node string, ok bool)
	// ServerID names this replica to agents (default: random), and
	// ServerCount says how many replicas serve behind the agents' address
	// (default 1): an agent that dials one load-balanced address keeps
	// dialing until it holds a tunnel to ServerCount distinct ServerIDs.
	ServerID    string
	ServerCount int

	// HandshakeTimeout bounds the TLS handshake of accepted connections
	// (default 10s).
	HandshakeTimeout time.Duration
	// DialTimeout bounds how long a frontend waits for the agent to answer
	// a CONNECT, its dial of the destination included (default 10s).
	DialTimeout time.Duration
	// KeepAlive is how long an agent connection may be silent before the
	// server pings (default 15s); PingTimeout bounds the answer (10s).
	KeepAlive   time.Duration
	PingTimeout time.Duration
	// DrainTimeout bounds how long a replaced agent connection keeps its
	// open streams (default 10m).
	DrainTimeout time.Duration

	Logger     *slog.Logger
	Clock      clock.Clock
	Registerer prometheus.Registerer
}

// Server accepts agents' tunnels and serves the frontends. Create it with
// New and call Run.
type Server struct {
	cfg    Config
	log    *slog.Logger
	clock  clock.Clock
	m      *metrics
	tlsCfg *tls.Config
	h2     *http2.Transport

	mu      sync.Mutex // guards agents, closing
	agents  map[string][]*agentConn
	closing bool
	wg      sync.WaitGroup // agent connections, drains and frontend splices
}

// New checks cfg, fills its defaults and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Certificate == nil || cfg.ClientCAs == nil {
		return nil, fmt.Errorf("%w: Certificate and ClientCAs are required", ErrConfig)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.HandshakeTimeout, 10*time.Second)
	def(&cfg.DialTimeout, 10*time.Second)
	def(&cfg.KeepAlive, tunnelwire.KeepAlive)
	def(&cfg.PingTimeout, tunnelwire.PingTimeout)
	def(&cfg.DrainTimeout, 10*time.Minute)
	if cfg.AuthorizeFrontend == nil {
		cfg.AuthorizeFrontend = DefaultAuthorizeFrontend
	}
	if cfg.ServerID == "" {
		cfg.ServerID = rand.Text()[:12]
	}
	if strings.ContainsAny(cfg.ServerID, " \n") || len(cfg.ServerID) > 64 {
		return nil, fmt.Errorf("%w: ServerID %q must be a short word", ErrConfig, cfg.ServerID)
	}
	cfg.ServerCount = max(cfg.ServerCount, 1)
	s := &Server{cfg: cfg, log: cfg.Logger, clock: clock.Or(cfg.Clock), agents: map[string][]*agentConn{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.m = newMetrics(cfg.Registerer)
	s.tlsCfg = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*cfg.Certificate},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    cfg.ClientCAs,
		NextProtos:   []string{tunnelwire.ALPN, "http/1.1"},
		Time:         s.clock.Now,
	}
	if cfg.LiveTLS != nil {
		s.tlsCfg = cfg.LiveTLS(s.tlsCfg)
	}
	s.h2 = &http2.Transport{
		MaxReadFrameSize: tunnelwire.MaxFrameSize,
		ReadIdleTimeout:  cfg.KeepAlive,
		PingTimeout:      cfg.PingTimeout,
	}
	return s, nil
}

// Listeners are where a Server serves; nil ones are skipped.
type Listeners struct {
	// TLS is a plain TCP listener: the server does TLS itself and tells
	// agents (ALPN tunnelwire.ALPN) from HTTP CONNECT frontends.
	TLS net.Listener
	// Unix serves HTTP CONNECT without TLS; see ListenSocket.
	Unix net.Listener
}

// Run serves the listeners until ctx is done, then closes them and every
// agent connection, and returns after every goroutine has ended.
func (s *Server) Run(ctx context.Context, ls Listeners) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	front := s.frontend(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Go(func() { errs <- serveFrontend(front, front.ln) })
	if ls.TLS != nil {
		wg.Go(func() { errs <- s.acceptTLS(ctx, ls.TLS, front) })
	}
	if ls.Unix != nil {
		wg.Go(func() { errs <- serveFrontend(front, ls.Unix) })
	}
	stop := context.AfterFunc(ctx, func() {
		if ls.TLS != nil {
			ls.TLS.Close()
		}
		front.close()
	})
	defer stop()
	var first error
	go func() {
		wg.Wait()
		close(errs)
	}()
	for err := range errs {
		if err != nil && ctx.Err() == nil && first == nil {
			first = err
			cancel()
		}
	}
	s.mu.Lock()
	s.closing = true
	for _, list := range s.agents {
		for _, a := range list {
			a.conn.Close()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return first
}

// enter registers a goroutine with the server; false means the server is
// shutting down and the work must not start.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	return true
}

// acceptTLS accepts connections, handshakes each and hands it to the agent
// or the frontend side by its ALPN.
func (s *Server) acceptTLS(ctx context.Context, ln net.Listener, front *frontend) error {
	for {
		raw, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept tunnel connections: %w", err)
		}
		if !s.enter() {
			raw.Close()
			return nil
		}
		go func() {
			defer s.wg.Done()
			s.handshake(ctx, raw, front)
		}()
	}
}

func (s *Server) handshake(ctx context.Context, raw net.Conn, front *frontend) {
	conn := tls.Server(tunnelwire.NewBatchConn(raw), s.tlsCfg) // see tunnelwire.BatchWriter
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.m.refused.WithLabelValues("tls").Inc()
		s.log.Warn("tunnel port: TLS handshake refused", "remote", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	if conn.ConnectionState().NegotiatedProtocol == tunnelwire.ALPN {
		s.serveAgent(ctx, conn)
		return
	}
	front.add(conn)
}
