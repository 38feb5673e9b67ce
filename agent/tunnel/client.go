// Package tunnel is the agent end of nodetrust's reverse tunnels. The
// agent dials each control-plane tunnel address with mutual TLS, then
// serves HTTP/2 on that connection: every CONNECT stream the control plane
// opens becomes one TCP connection to a destination in the node's
// allowlist (by default only the kubelet). Streams have their own HTTP/2
// flow control, so a stalled stream never delays another.
//
// A Client keeps one tunnel per server address, reconnects with capped
// jittered backoff, pings idle connections, and when the client
// certificate rotates opens a tunnel with the new certificate before it
// drains the old one.
package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// ErrConfig is wrapped by every error about a Config.
var ErrConfig = errors.New("invalid tunnel configuration")

// Config configures a Client. Zero durations take the documented defaults.
type Config struct {
	// Servers are the control plane's tunnel addresses (host:port); the
	// client keeps one tunnel to each.
	Servers []string
	// ServerName overrides the name the servers' certificates are checked
	// against (default: the host of each address).
	ServerName string
	// NodeName is the node's name; a CONNECT to NodeName:PORT means the
	// node's own addresses and loopback, in that order. Empty means the
	// name in the client certificate (CN=system:node:<name>).
	NodeName string
	// ClientCertificate returns the current client certificate; it is
	// polled every CertCheckInterval, and a new certificate opens new
	// tunnels and drains the old ones.
	ClientCertificate func() (*tls.Certificate, error)
	// Roots returns the cluster CA pool; it is called on every dial.
	Roots func() (*x509.CertPool, error)
	// Allow is the destination allowlist (see Allowlist); empty means
	// DefaultAllow.
	Allow []string
	// SelfAddrs returns the node's own addresses for "self" entries
	// (default none: only loopback and explicit entries match).
	SelfAddrs func() ([]netip.Addr, error)
	// Resolver resolves DNS names of destinations (default net.DefaultResolver).
	Resolver *net.Resolver

	// DialTimeout bounds the TCP and TLS handshake with a server, and a
	// destination dial (default 5s).
	DialTimeout time.Duration
	// KeepAlive is how long a tunnel may be silent before the agent pings
	// (default 15s); PingTimeout is how long the answer may take (10s).
	KeepAlive   time.Duration
	PingTimeout time.Duration
	// BackoffMin and BackoffMax bound the reconnect delay, which doubles
	// per failure and is jittered down to half (defaults 100ms and 1s, so
	// a restarted server has its agents back within about a second).
	BackoffMin time.Duration
	BackoffMax time.Duration
	// CertCheckInterval is how often ClientCertificate is polled (5s).
	CertCheckInterval time.Duration
	// DrainTimeout bounds how long a replaced tunnel waits for open
	// streams before it is closed (default 10m); StopTimeout bounds it once
	// Run's context is done (default 5s).
	DrainTimeout time.Duration
	StopTimeout  time.Duration

	Logger     *slog.Logger
	Clock      clock.Clock
	Registerer prometheus.Registerer
	// Rand returns jitter in [0,1) (default math/rand/v2).
	Rand func() float64
}

// Client keeps the agent's tunnels up. Create it with New and call Run.
type Client struct {
	cfg   Config
	allow *Allowlist
	log   *slog.Logger
	clock clock.Clock
	m     *metrics

	connected atomic.Int64
	handlers  sync.WaitGroup // stream handlers and their copy goroutines

	selfMu    sync.Mutex // guards selfCache, selfAt
	selfCache []netip.Addr
	selfAt    time.Time
}

// New checks cfg, fills its defaults and returns a Client.
func New(cfg Config) (*Client, error) {
	if len(cfg.Servers) == 0 {
		return nil, fmt.Errorf("%w: no server addresses", ErrConfig)
	}
	for _, s := range cfg.Servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("%w: server %q is not host:port", ErrConfig, s)
		}
	}
	if cfg.ClientCertificate == nil || cfg.Roots == nil {
		return nil, fmt.Errorf("%w: ClientCertificate and Roots are required", ErrConfig)
	}
	allow, err := ParseAllowlist(cfg.Allow)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.DialTimeout, 5*time.Second)
	def(&cfg.KeepAlive, tunnelwire.KeepAlive)
	def(&cfg.PingTimeout, tunnelwire.PingTimeout)
	def(&cfg.BackoffMin, 100*time.Millisecond)
	def(&cfg.BackoffMax, time.Second)
	def(&cfg.CertCheckInterval, 5*time.Second)
	def(&cfg.DrainTimeout, 10*time.Minute)
	def(&cfg.StopTimeout, 5*time.Second)
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	c := &Client{cfg: cfg, allow: allow, log: cfg.Logger, clock: clock.Or(cfg.Clock)}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.m = newMetrics(cfg.Registerer)
	return c, nil
}

// Run keeps a tunnel to every server until ctx is done, then drains the
// tunnels (bounded by StopTimeout) and returns nil after every goroutine,
// stream handlers included, has ended.
func (c *Client) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, addr := range c.cfg.Servers {
		r := &replicas{held: map[int]string{}, slots: 1}
		var spawn func(slot int)
		spawn = func(slot int) { wg.Go(func() { c.supervise(ctx, addr, slot, r, spawn) }) }
		spawn(0)
	}
	wg.Wait()
	c.handlers.Wait()
	return nil
}

// Connected returns how many tunnels are up (draining ones included).
func (c *Client) Connected() int { return int(c.connected.Load()) }

// replicas tracks, for one server address, which replicas the agent holds
// tunnels to: behind a load-balanced address each dial may land on any of
// them, and the servers' hellos say how many there are.
type replicas struct {
	mu    sync.Mutex
	held  map[int]string // slot -> server id
	want  int            // the largest replica count a server announced
	slots int            // slots started
}

// claim records that slot holds a tunnel to server id (one of count). A
// replica keeps a node's newest tunnel and drains the older one, so when
// another slot held id, the new tunnel takes it over and that slot, whose
// tunnel is being drained, dials again for another replica. grow is how
// many new slots to start so there is one per announced replica.
func (r *replicas) claim(slot int, id string, count int) (grow int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for s, h := range r.held {
		if s != slot && h == id {
			delete(r.held, s)
		}
	}
	r.held[slot] = id
	r.want = max(r.want, count)
	if grow = r.want - r.slots; grow > 0 {
		r.slots = r.want
	}
	return grow
}

func (r *replicas) release(slot int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.held, slot)
}

// supervise keeps one tunnel, slot, to addr: it dials, serves, and when the
// client certificate changes dials a replacement and drains the old one. A
// hello announcing more replicas than there are slots starts more slots;
// slots whose dials land on the same replica sort themselves out as that
// replica drains all but the newest tunnel (see claim).
func (c *Client) supervise(ctx context.Context, addr string, slot int, r *replicas, spawn func(int)) {
	log := c.log.With("server", addr, "slot", slot)
	defer r.release(slot)
	var drains sync.WaitGroup
	defer drains.Wait()
	failures := 0
	var cur *tunnelConn
	for ctx.Err() == nil {
		if cur == nil {
			t, err := c.dial(ctx, addr)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				d := c.backoff(failures)
				log.Warn("tunnel dial failed; will retry", "retry_in", d.Round(time.Millisecond), "err", err)
				if !c.sleep(ctx, d) {
					return
				}
				continue
			}
			grow := r.claim(slot, t.serverID, t.serverCount)
			for i := range grow {
				spawn(slot + 1 + i)
			}
			failures = 0
			cur = t
			log.Info("tunnel connected", "replica", t.serverID, "replicas", t.serverCount,
				"tls_version", tls.VersionName(t.tls.ConnectionState().Version))
		}
		tick := c.clock.NewTimer(c.cfg.CertCheckInterval)
		select {
		case <-ctx.Done():
			tick.Stop()
			c.drain(ctx, cur)
			return
		case <-cur.done:
			tick.Stop()
			log.Warn("tunnel closed; reconnecting", "replica", cur.serverID)
			r.release(slot)
			cur = nil
			failures = 1 // the first retry waits a little: the server may be restarting
			if !c.sleep(ctx, c.backoff(failures)) {
				return
			}
		case <-tick.C():
			if !c.certChanged(cur) {
				continue
			}
			next, err := c.dial(ctx, addr)
			if err != nil {
				log.Warn("tunnel with the new client certificate failed; keeping the old one", "err", err)
				continue
			}
			r.claim(slot, next.serverID, next.serverCount)
			log.Info("client certificate changed; new tunnel up, draining the old one")
			old := cur
			cur = next
			drains.Go(func() {
				// The server registers the new tunnel a moment after
				// the preface this side waited for; until then the old
				// one must stay, or a request could find the node with
				// no tunnel at all (seen as a 503 under CA rotation).
				c.sleep(ctx, min(handover, c.cfg.CertCheckInterval))
				c.drain(ctx, old)
			})
		}
	}
	if cur != nil {
		c.drain(ctx, cur)
	}
}

// handover is how long a replaced tunnel keeps taking streams after its
// replacement is up (at most CertCheckInterval).
const handover = time.Second

func (c *Client) drain(ctx context.Context, t *tunnelConn) {
	t.drain(ctx, c.cfg.DrainTimeout, c.cfg.StopTimeout, c.clock)
}

// certChanged reports whether the client certificate differs from the one
// t was opened with.
func (c *Client) certChanged(t *tunnelConn) bool {
	cert, err := c.cfg.ClientCertificate()
	if err != nil || cert == nil || len(cert.Certificate) == 0 {
		return false
	}
	return !bytes.Equal(cert.Certificate[0], t.leaf)
}

// backoff is the delay after n consecutive failures: doubling from
// BackoffMin, capped at BackoffMax, jittered down to half.
func (c *Client) backoff(n int) time.Duration {
	d := c.cfg.BackoffMin << min(max(n-1, 0), 20)
	d = min(d, c.cfg.BackoffMax)
	return time.Duration(float64(d) * (0.5 + 0.5*c.cfg.Rand()))
}

// sleep waits d on the clock; false means ctx ended first.
func (c *Client) sleep(ctx context.Context, d time.Duration) bool {
	t := c.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

// selfAddrs returns the node's own addresses, cached for ten seconds.
func (c *Client) selfAddrs() []netip.Addr {
	if c.cfg.SelfAddrs == nil {
		return nil
	}
	c.selfMu.Lock()
	defer c.selfMu.Unlock()
	now := c.clock.Now()
	if c.selfCache != nil && now.Sub(c.selfAt) < 10*time.Second && !now.Before(c.selfAt) {
		return c.selfCache
	}
	addrs, err := c.cfg.SelfAddrs()
	if err != nil {
		c.log.Warn("could not list the node's addresses; self entries match nothing", "err", err)
		return c.selfCache
	}
	c.selfCache, c.selfAt = addrs, now
	return addrs
}
