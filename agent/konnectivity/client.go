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
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
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
	// ClientCertificate returns the current client certificate; it is
	// called on every TLS handshake, so a rotated certificate is used by
	// the next connection.
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
	// StopTimeout bounds how long Run waits, after DRAIN, for open
	// connections to end once its context is done (default 5s).
	StopTimeout time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Client keeps one AgentService.Connect stream to the server. Create it
// with New and call Run.
type Client struct {
	cfg   Config
	allow *tunnel.Allowlist
	log   *slog.Logger
	m     *metrics

	connected atomic.Int64
	nextID    atomic.Int64 // connectIDs, unique per Client
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
	}, nil
}

// Connected reports how many streams to the server are up (0 or 1).
func (c *Client) Connected() int { return int(c.connected.Load()) }

// Run keeps a stream to the server until ctx is done, reconnecting with
// backoff. When ctx is done it sends DRAIN, waits up to StopTimeout for
// open connections, closes the rest and returns nil. Every goroutine it
// started has ended when it returns.
func (c *Client) Run(ctx context.Context) error {
	delay := c.cfg.BackoffMin
	for {
		start := time.Now()
		err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*c.cfg.BackoffMax {
			delay = c.cfg.BackoffMin
		}
		c.log.Warn("konnectivity stream ended; reconnecting", "err", err, "in", delay)
		t := time.NewTimer(delay/2 + time.Duration(rand.Int64N(int64(delay/2)+1)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, c.cfg.BackoffMax)
	}
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
func (c *Client) tlsConfig() (*tls.Config, error) {
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
			return c.cfg.ClientCertificate()
		},
	}, nil
}
