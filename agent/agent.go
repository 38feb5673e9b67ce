package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/agent/certstore"
	"github.com/nodetrust/nodetrust/agent/konnectivity"
	"github.com/nodetrust/nodetrust/agent/mdlocal"
	"github.com/nodetrust/nodetrust/agent/nodeaddr"
	"github.com/nodetrust/nodetrust/agent/steer"
	"github.com/nodetrust/nodetrust/agent/tunnel"
	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// Options are the agent's collaborators; the zero value uses the real ones.
type Options struct {
	Logger *slog.Logger
	Clock  clock.Clock
	// Registerer receives the agent's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Metadata overrides the metadata client built from the configuration.
	Metadata *mdclient.Client
	// Addresses lists the node's addresses for serving-certificate SANs
	// (default: nodeaddr.List, read with netlink).
	Addresses func() ([]netip.Addr, error)
	// Hostname is the node's host name (default os.Hostname).
	Hostname func() (string, error)
	// Rand returns renewal jitter in [0,1) (default math/rand/v2).
	Rand func() float64
}

// Backoff between failed attempts at one credential: capped and jittered,
// forever, so a control plane that was down for hours is picked up within
// a couple of minutes of its return and is never hammered.
const (
	backoffMin = time.Second
	backoffMax = 2 * time.Minute
)

// Agent keeps a node's credentials valid.
type Agent struct {
	cfg      *Config
	log      *slog.Logger
	clock    clock.Clock
	boot     *bootstrap.Config
	md       *mdclient.Client
	client   *credential
	serving  *credential // nil when not enabled
	creds    []*credential
	m        *metrics
	rand     func() float64
	addrs    func() ([]netip.Addr, error)
	hostname func() (string, error)
	caPath   string
	status   string
	tunnel   *tunnel.Client        // nil when no tunnel servers are configured
	konn     []konnectivity.Config // one per server in konnectivity mode
	podMD    *mdlocal.Mirror       // nil when podMetadata is off
	steer    *steer.Steerer
	life     lifecycle // lifecycle.go: Lifecycle, heartbeat, Reload

	mu          sync.Mutex // guards nodeName, lastContact
	nodeName    string
	lastContact time.Time

	trust *trust // the published trust bundle (CA rotation)
}

// New returns an agent for cfg.
func New(cfg *Config, opt Options) (*Agent, error) {
	a := &Agent{
		cfg:      cfg,
		log:      opt.Logger,
		clock:    clock.Or(opt.Clock),
		md:       opt.Metadata,
		rand:     opt.Rand,
		addrs:    opt.Addresses,
		hostname: opt.Hostname,
		nodeName: cfg.NodeName,
		caPath:   filepath.Join(cfg.StateDir, "ca.crt"),
		status:   filepath.Join(cfg.StateDir, StatusFile),
		trust:    newTrust(),
		life:     lifecycle{requests: make(chan reloadRequest)},
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.rand == nil {
		a.rand = rand.Float64
	}
	if a.addrs == nil {
		a.addrs = nodeaddr.List
	}
	if a.hostname == nil {
		a.hostname = os.Hostname
	}
	if a.md == nil {
		a.md = mdclient.New(mdclient.Config{Host: cfg.Metadata.Host, Logger: a.log, Clock: a.clock})
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	a.boot = &bootstrap.Config{
		Metadata:         a.md,
		TokenAttribute:   cfg.Metadata.TokenAttribute,
		KubeEnvAttribute: cfg.Metadata.KubeEnvAttribute,
		CAFile:           cfg.CAFile,
		CAPin:            cfg.CAPin,
		Logger:           a.log,
	}
	pki := filepath.Join(cfg.StateDir, "pki")
	a.client = &credential{name: "client", signer: signerClient, duration: time.Duration(cfg.ClientCertDuration),
		store: &certstore.Store{Dir: pki, Prefix: "kubelet-client", Clock: a.clock, Logger: a.log}}
	a.creds = []*credential{a.client}
	if cfg.Serving.Enabled {
		a.serving = &credential{name: "serving", signer: signerServing, duration: time.Duration(cfg.Serving.Duration),
			store: &certstore.Store{Dir: pki, Prefix: "kubelet-server", Clock: a.clock, Logger: a.log}}
		a.creds = append(a.creds, a.serving)
	}
	a.m = newMetrics(opt.Registerer, a)
	if pm := cfg.PodMetadata; pm.Enabled {
		sc, err := pm.steerConfig()
		if err == nil {
			sc.Logger = a.log.With("component", "steer")
			a.steer, err = steer.New(sc)
		}
		if err == nil {
			a.podMD, err = mdlocal.New(mdlocal.Config{
				Upstream:                   mdclient.Config{Host: pm.Upstream, Logger: a.log.With("component", "pod-metadata"), Clock: a.clock},
				ConcealedAttributes:        pm.ConcealedAttributes,
				ExposeServiceAccountTokens: pm.ExposeServiceAccountTokens,
				Logger:                     a.log.With("component", "pod-metadata"),
				Clock:                      a.clock,
				Registerer:                 opt.Registerer,
			})
		}
		if err != nil {
			return nil, fmt.Errorf("pod metadata: %w", err)
		}
	}
	if cfg.Tunnel.Mode == TunnelKonnectivity {
		for _, s := range cfg.Tunnel.Servers {
			kc := konnectivity.Config{Server: s, ServerName: cfg.Tunnel.ServerName, AgentID: cfg.Tunnel.AgentID,
				Allow: cfg.Tunnel.Allow, ClientCertificate: a.ClientCertificate, Roots: a.Roots, SelfAddrs: a.addrs,
				Logger: a.log, Registerer: opt.Registerer}
			if opt.Registerer != nil && len(cfg.Tunnel.Servers) > 1 {
				kc.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"server": s}, opt.Registerer)
			}
			check := kc // checked now; run once the node name is known
			check.NodeName, check.Registerer = "node", nil
			if _, err := konnectivity.New(check); err != nil {
				return nil, fmt.Errorf("tunnel: %w", err)
			}
			a.konn = append(a.konn, kc)
		}
	} else if len(cfg.Tunnel.Servers) > 0 {
		tc, err := tunnel.New(tunnel.Config{Servers: cfg.Tunnel.Servers, ServerName: cfg.Tunnel.ServerName, Allow: cfg.Tunnel.Allow,
			ClientCertificate: a.ClientCertificate, Roots: a.Roots, SelfAddrs: a.addrs,
			Logger: a.log.With("component", "tunnel"), Clock: a.clock, Registerer: opt.Registerer})
		if err != nil {
			return nil, err
		}
		a.tunnel = tc
	}
	return a, nil
}

// Run keeps the credentials valid until ctx is done: it obtains what is
// missing, renews at the planned time, re-checks every CheckInterval (so
// suspend, resume and clock jumps are noticed), retries failures with
// capped jittered backoff, and writes the status file after each round.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("agent starting", "server", a.cfg.Server, "state_dir", a.cfg.StateDir)
	if a.tunnel != nil {
		// Tunnels authenticate with the client certificate: they start
		// once there is one, instead of failing (and warning) until then.
		var wg sync.WaitGroup
		wg.Go(func() {
			select {
			case <-a.client.held():
				a.tunnel.Run(ctx)
			case <-ctx.Done():
			}
		})
		defer wg.Wait()
	}
	if len(a.konn) > 0 {
		var wg sync.WaitGroup
		wg.Go(func() { a.runKonnectivity(ctx) })
		defer wg.Wait()
	}
	if a.podMD != nil {
		var wg sync.WaitGroup
		wg.Go(func() { a.runPodMetadata(ctx) })
		defer wg.Wait()
	}
	{
		var wg sync.WaitGroup
		wg.Go(func() { a.runTrust(ctx) })
		defer wg.Wait()
	}
	for {
		next := a.liveRound(ctx)
		if ctx.Err() != nil || !a.idleOrWake(ctx, next) {
			a.writeStatus()
			return nil
		}
	}
}

// ErrNotReady is returned by Once when the credentials could not all be
// obtained before the context ended.
var ErrNotReady = errors.New("credentials not ready")

// Once makes the credentials valid (bootstrapping or renewing only if
// needed) and returns; it retries with backoff until ctx ends, then
// returns ErrNotReady wrapping the last error.
func (a *Agent) Once(ctx context.Context) error {
	for {
		next := a.round(ctx)
		if a.ready() {
			return nil
		}
		var last error
		for _, c := range a.creds {
			if e := c.err(); e != nil {
				last = e
			}
		}
		t := a.clock.NewTimer(max(next.Sub(a.clock.Now()), 0))
		select {
		case <-ctx.Done():
			t.Stop()
			if last == nil {
				last = ctx.Err()
			}
			return fmt.Errorf("%w: %w", ErrNotReady, last)
		case <-t.C():
		}
	}
}

// ready reports whether every credential holds a certificate with nothing
// left to do now.
func (a *Agent) ready() bool {
	now := a.clock.Now()
	for _, c := range a.creds {
		if !c.settled(now) {
			return false
		}
	}
	return true
}

// round gives every credential its due attempt and returns when the next
// one is due.
func (a *Agent) round(ctx context.Context) time.Time {
	now := a.clock.Now()
	next := now.Add(time.Duration(a.cfg.CheckInterval))
	for _, c := range a.creds {
		if ctx.Err() != nil {
			break
		}
		if due := c.retryAt(); now.Before(due) {
			next = minTime(next, due)
			continue
		}
		if c == a.serving && !a.client.settled(now) && a.client.current() == nil {
			continue // serving certificates are requested with the client certificate
		}
		err := a.ensure(ctx, c)
		if err != nil && ctx.Err() == nil {
			reason := classify(err)
			a.m.failures.WithLabelValues(c.name, reason).Inc()
			delay := c.fail(a.clock.Now(), err, a.backoff)
			a.log.Error("could not obtain certificate; will retry", "credential", c.name, "reason", reason, "retry_in", delay.Round(time.Millisecond), "err", err)
		}
		next = minTime(next, c.nextDue())
	}
	a.writeStatus()
	return next
}

// backoff returns the delay after n consecutive failures.
func (a *Agent) backoff(n int) time.Duration { return BackoffDelay(n, a.rand()) }

// BackoffDelay is the delay after n consecutive failures for a jitter r in
// [0,1): exponential from backoffMin, capped at backoffMax, and jittered
// down to half so a fleet that failed together does not retry together.
func BackoffDelay(n int, r float64) time.Duration {
	d := backoffMin << min(max(n-1, 0), 20)
	d = min(d, backoffMax)
	return time.Duration(float64(d) * (0.5 + 0.5*r))
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Healthy reports whether every credential is valid and not past its
// renewal window; it turns false before expiry when renewal keeps failing.
func (a *Agent) Healthy() bool {
	now := a.clock.Now()
	for _, c := range a.creds {
		p := c.current()
		if p == nil || !Healthy(now, p.Cert) {
			return false
		}
	}
	return true
}

// ServeHealth answers /healthz: 200 when Healthy, 503 naming what is wrong.
func (a *Agent) ServeHealth(w http.ResponseWriter, _ *http.Request) {
	now := a.clock.Now()
	for _, c := range a.creds {
		p := c.current()
		switch {
		case p == nil:
			http.Error(w, c.name+" certificate: none yet", http.StatusServiceUnavailable)
			return
		case !Healthy(now, p.Cert):
			http.Error(w, fmt.Sprintf("%s certificate expires %s and has not been renewed: %v", c.name, p.Cert.NotAfter.UTC().Format(time.RFC3339), c.err()), http.StatusServiceUnavailable)
			return
		}
	}
	w.Write([]byte("ok\n"))
}

// ClientCertificate returns the current client certificate, for
// tls.Config.GetClientCertificate of tunnels; it follows rotations.
func (a *Agent) ClientCertificate() (*tls.Certificate, error) {
	p := a.client.current()
	if p == nil {
		return nil, errors.New("no client certificate yet")
	}
	return p.TLS, nil
}

// Roots returns the cluster CA bundle the agent trusts.
func (a *Agent) Roots() (*x509.CertPool, error) {
	_, pool, err := a.readCA()
	return pool, err
}

func (a *Agent) contact() {
	a.mu.Lock()
	a.lastContact = a.clock.Now()
	a.mu.Unlock()
	a.m.lastContact.Set(float64(a.clock.Now().Unix()))
}

// runPodMetadata serves pods their concealed metadata and steers them to
// it until ctx is done, starting again with backoff when either part fails.
func (a *Agent) runPodMetadata(ctx context.Context) {
	for n := 1; ; n++ {
		err := a.podMetadataOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		d := a.backoff(n)
		a.log.Error("pod metadata server stopped; pods may reach the upstream metadata server unconcealed", "err", err, "retry_in", d.Round(time.Millisecond))
		t := a.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// podMetadataOnce listens, then steers pods to the listener and serves
// them; the first part to fail stops the other.
func (a *Agent) podMetadataOnce(ctx context.Context) error {
	ln, err := steer.Listen(ctx, a.cfg.PodMetadata.Listen)
	if err != nil {
		return fmt.Errorf("listen for pods: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- a.podMD.Run(ctx, ln); cancel() })
	wg.Go(func() { errc <- a.steer.Run(ctx); cancel() })
	wg.Wait()
	return errors.Join(<-errc, <-errc)
}

// runKonnectivity learns the node name (the default agent id), then keeps
// a stream to each konnectivity-server until ctx is done.
func (a *Agent) runKonnectivity(ctx context.Context) {
	var name string
	for n := 1; ; n++ {
		var err error
		if name, err = a.node(ctx); err == nil {
			break
		}
		t := a.clock.NewTimer(a.backoff(n))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
	select { // streams authenticate with the client certificate
	case <-a.client.held():
	case <-ctx.Done():
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, kc := range a.konn {
		kc.NodeName = name
		c, err := konnectivity.New(kc)
		if err != nil { // checked in New; only a bad node name gets here
			a.log.Error("konnectivity tunnel not started", "server", kc.Server, "err", err)
			continue
		}
		a.addTunnel(c)
		wg.Go(func() { c.Run(ctx) })
	}
}
