// Package konnectivity is the agent end of a stock konnectivity-server
// (sigs.k8s.io/apiserver-network-proxy): it opens the gRPC stream
// AgentService.Connect with the node's client certificate (mutual TLS),
// announces agentid and agentidentifiers, and serves the server's
// DIAL_REQ, DATA, CLOSE_REQ and DIAL_CLS packets by dialling destinations
// in the node's tunnel allowlist. On shutdown it sends DRAIN and lets open
// connections finish for a bounded time.
//
// Unlike the native tunnels (package tunnel) every proxied connection
// shares one gRPC stream, so there is no per-connection flow control; that
// is the protocol's, not this package's, limit.
package konnectivity

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/agent/tunnel"
)

// ErrConfig is wrapped by every error about a Config.
var ErrConfig = errors.New("invalid konnectivity configuration")

// MinReadSize is the smallest DATA chunk the agent reads from a destination.
const MinReadSize = 32 << 10

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// Server is the konnectivity-server's agent address (host:port).
	Server string
	// ServerName overrides the name the server certificate is checked
	// against (default: the host of Server).
	ServerName string
	// AgentID is sent as the agentid header (default: NodeName).
	AgentID string
	// NodeName is the node's name, sent as a host identifier; a dial to
	// NodeName:PORT means the node's own addresses and loopback.
	NodeName string
	// ClientCertificate returns the current client certificate. It is
	// called before each connect and polled (CertPollInterval); when it
	// changes, the streams are replaced (see Client.Run).
	ClientCertificate func() (*tls.Certificate, error)
	// Roots returns the cluster CA pool; it is called on every connect.
	Roots func() (*x509.CertPool, error)
	// Allow is the destination allowlist, in tunnel.Allowlist syntax;
	// empty means tunnel.DefaultAllow.
	Allow []string
	// SelfAddrs returns the node's own addresses, for "self" entries and
	// the ipv4/ipv6 identifiers (default none).
	SelfAddrs func() ([]netip.Addr, error)
	// Resolver resolves allowlisted DNS names (default net.DefaultResolver).
	Resolver *net.Resolver

	// DialTimeout bounds the connect to the server and each destination
	// dial (default 5s). A destination that does not answer in time gets
	// a DIAL_RSP with an error, so the server closes its side too.
	DialTimeout time.Duration
	// ReadSize is the DATA chunk size (default 64 KiB, at least MinReadSize).
	ReadSize int
	// BackoffMin and BackoffMax bound the reconnect delay, which doubles
	// per failure and is jittered down to half (defaults 100ms and 2s).
	BackoffMin, BackoffMax time.Duration
	// StopTimeout bounds how long a draining stream waits, after DRAIN,
	// for open connections to end: when Run's context is done or when a
	// rotated certificate replaces the stream (default 5s).
	StopTimeout time.Duration
	// CertPollInterval is how often ClientCertificate is polled for a
	// rotated certificate (default 10s).
	CertPollInterval time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Client keeps an AgentService.Connect stream to each server. Create it
// with New and call Run.
type Client struct {
	cfg   Config
	allow *tunnel.Allowlist
	log   *slog.Logger
	m     *metrics

	connected atomic.Int64
	nextID    atomic.Int64 // connectIDs, unique per Client

	// dialContext dials destinations; tests replace it.
	dialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// New checks cfg, fills its defaults and returns a Client.
func New(cfg Config) (*Client, error) {
	if _, _, err := net.SplitHostPort(cfg.Server); err != nil {
		return nil, fmt.Errorf("%w: server %q is not host:port", ErrConfig, cfg.Server)
	}
	if cfg.ClientCertificate == nil || cfg.Roots == nil {
		return nil, fmt.Errorf("%w: ClientCertificate and Roots are required", ErrConfig)
	}
	allow, err := tunnel.ParseAllowlist(cfg.Allow)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if cfg.AgentID == "" {
		cfg.AgentID = cfg.NodeName
	}
	if cfg.AgentID == "" {
		return nil, fmt.Errorf("%w: AgentID or NodeName is required", ErrConfig)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.DialTimeout, 5*time.Second)
	def(&cfg.BackoffMin, 100*time.Millisecond)
	def(&cfg.BackoffMax, 2*time.Second)
	def(&cfg.StopTimeout, 5*time.Second)
	def(&cfg.CertPollInterval, 10*time.Second)
	if cfg.ReadSize <= 0 {
		cfg.ReadSize = 64 << 10
	}
	cfg.ReadSize = max(cfg.ReadSize, MinReadSize)
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Client{
		cfg:   cfg,
		allow: allow,
		log:   cfg.Logger.With("component", "konnectivity", "server", cfg.Server),
		m:     newMetrics(cfg.Registerer),

		dialContext: (&net.Dialer{}).DialContext,
	}, nil
}

// Connected reports how many streams to servers are up, draining ones
// included.
func (c *Client) Connected() int { return int(c.connected.Load()) }

// Run keeps one stream to each konnectivity-server until ctx is done. It
// dials Server, which may balance across several replicas, until it holds
// a stream to as many distinct serverids as the servercount header says;
// a stream that lands on a serverid it already holds is closed, and it
// dials again after a backoff. A stream that breaks is redialled after a
// backoff. When the client certificate changes (it is polled every
// CertPollInterval) every stream is replaced: a new stream is dialled and,
// once it reaches the same serverid, the old one is drained (DRAIN, then
// closed when its connections have ended or after StopTimeout).
//
// When ctx is done it drains every stream and returns nil. Every goroutine
// it started has ended when it returns.
func (c *Client) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ended := make(chan *session)
	running := 0                  // sessions being served
	held := map[string]*session{} // streams with the current certificate, by serverid
	var stale []*session          // streams with an old certificate, not yet replaced
	want := 1                     // servercount
	delay := c.cfg.BackoffMin
	var retry <-chan time.Time // non-nil while backing off
	backoff := func() {
		retry = time.After(delay/2 + time.Duration(rand.Int64N(int64(delay/2)+1)))
		delay = min(2*delay, c.cfg.BackoffMax)
	}
	poll := time.NewTicker(c.cfg.CertPollInterval)
	defer poll.Stop()
	cert, certID, err := c.certificate()
	if err != nil {
		c.log.Warn("client certificate", "err", err)
	}
	for {
		if retry == nil && len(held) < want && ctx.Err() == nil {
			if cert == nil {
				cert, certID, err = c.certificate()
			}
			var s *session
			if err == nil {
				s, err = c.connect(cert, certID)
			}
			switch {
			case err != nil:
				c.log.Warn("konnectivity connect failed", "err", err, "retryIn", delay)
				cert = nil
				backoff()
			case held[s.serverID] != nil:
				c.log.Info("konnectivity stream reached a server already held; closing it", "serverID", s.serverID, "held", len(held), "serverCount", want)
				s.abort()
				want = s.count
				backoff()
			default:
				held[s.serverID] = s
				want = s.count
				running++
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := s.serve()
					if err != nil {
						s.log.Warn("konnectivity stream ended", "err", err)
					}
					ended <- s
				}()
				full := len(held) >= want // then no old stream is needed any more
				stale = slices.DeleteFunc(stale, func(old *session) bool {
					if full || old.serverID == s.serverID {
						old.startDrain()
						return true
					}
					return false
				})
				continue
			}
		}
		select {
		case <-ctx.Done():
			for _, s := range held {
				s.startDrain()
			}
			for _, s := range stale {
				s.startDrain()
			}
			for ; running > 0; running-- {
				<-ended
			}
			return nil
		case s := <-ended:
			running--
			if held[s.serverID] == s {
				delete(held, s.serverID)
				if time.Since(s.started) > 10*c.cfg.BackoffMax {
					delay = c.cfg.BackoffMin
				}
				if retry == nil {
					backoff()
				}
			}
			stale = slices.DeleteFunc(stale, func(old *session) bool { return old == s })
		case <-retry:
			retry = nil
		case <-poll.C:
			nc, nid, err := c.certificate()
			if err != nil || nid == certID {
				continue
			}
			c.log.Info("client certificate changed; replacing konnectivity streams", "streams", len(held))
			cert, certID = nc, nid
			for _, s := range held {
				stale = append(stale, s)
			}
			clear(held)
			retry, delay = nil, c.cfg.BackoffMin
		}
	}
}

// certificate returns the current client certificate and its SHA-256.
func (c *Client) certificate() (*tls.Certificate, [32]byte, error) {
	cert, err := c.cfg.ClientCertificate()
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("client certificate: %w", err)
	}
	if cert == nil || len(cert.Certificate) == 0 {
		return nil, [32]byte{}, errors.New("client certificate: none")
	}
	return cert, sha256.Sum256(cert.Certificate[0]), nil
}

// identifiers is the agentidentifiers header: the node's name and
// addresses, URL-encoded as the stock agent does.
func (c *Client) identifiers() string {
	v := url.Values{}
	if c.cfg.NodeName != "" {
		v.Add("host", c.cfg.NodeName)
	}
	for _, ip := range c.selfAddrs() {
		if ip.Is4() || ip.Is4In6() {
			v.Add("ipv4", ip.Unmap().String())
		} else {
			v.Add("ipv6", ip.String())
		}
	}
	return v.Encode()
}

func (c *Client) selfAddrs() []netip.Addr {
	if c.cfg.SelfAddrs == nil {
		return nil
	}
	ips, err := c.cfg.SelfAddrs()
	if err != nil {
		c.log.Warn("list node addresses", "err", err)
		return nil
	}
	return ips
}

// tlsConfig is the client side of the mutual TLS to the server.
func (c *Client) tlsConfig(cert *tls.Certificate) (*tls.Config, error) {
	roots, err := c.cfg.Roots()
	if err != nil {
		return nil, fmt.Errorf("load cluster CA: %w", err)
	}
	name := c.cfg.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(c.cfg.Server)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12, // TLS 1.3 is negotiated whenever the server has it
		RootCAs:    roots,
		ServerName: name,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cert, nil
		},
	}, nil
}
