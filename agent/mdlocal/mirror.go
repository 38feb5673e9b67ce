package mdlocal

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// Config configures a Mirror. The zero value mirrors 169.254.169.254 (or
// GCE_METADATA_HOST) and conceals the default attributes and every
// credential from pods.
type Config struct {
	// Upstream configures the client of the upstream metadata server. Its
	// HTTPClient's transport is wrapped to notice when upstream fails.
	Upstream mdclient.Config
	// ConcealedAttributes are the attribute keys pods never see. Nil means
	// metadata.DefaultConcealedAttributes; an empty list conceals none.
	// (The upstream's own list cannot be read: the host view does not
	// show it.)
	ConcealedAttributes []string
	// ExposeServiceAccountTokens hands the node's service-account access
	// tokens to pods. Off by default: a pod holding them acts as the node.
	// Identity tokens are never mirrored (each needs its own audience).
	ExposeServiceAccountTokens bool
	// TokenRefresh is how often exposed tokens are fetched again (default 1m).
	TokenRefresh time.Duration
	// IsNodeAddress reports whether a connection's source address is one of
	// the node's own; nil means asking the kernel with netlink. An error
	// counts as "no": the caller gets the pod view.
	IsNodeAddress func(netip.Addr) (bool, error)
	// AllowedHosts are Host header names accepted besides the metadata
	// server's own (see metadata.Config).
	AllowedHosts []string
	// RetryMin and RetryMax bound the delay before watching upstream again
	// after a watch ended (default 1s and 30s).
	RetryMin, RetryMax time.Duration
	Logger             *slog.Logger
	Clock              clock.Clock
	// Registerer receives the metrics of the mirror and of its metadata
	// server (nil: not registered).
	Registerer prometheus.Registerer
}

// Mirror keeps a copy of the upstream metadata and serves it to pods.
type Mirror struct {
	cfg     Config
	log     *slog.Logger
	clock   clock.Clock
	up      *mdclient.Client
	srv     *metadata.Server
	m       *metrics
	isNode  func(netip.Addr) (bool, error)
	refresh time.Duration
	kick    chan struct{} // wakes the token loop after the first mirror

	mu       sync.Mutex // guards the fields below and serialises SetData
	instance string     // the last instance/ dump, "" until read
	project  string     // the last project/ dump
	accounts []string   // service-account keys of the last good data
	tokens   map[string]*metadata.Token
	mirrored bool
	stale    bool
}

// New returns a mirror; nothing is read until Run.
func New(cfg Config) (*Mirror, error) {
	m := &Mirror{
		cfg:     cfg,
		log:     cfg.Logger,
		clock:   clock.Or(cfg.Clock),
		isNode:  cfg.IsNodeAddress,
		refresh: cfg.TokenRefresh,
		kick:    make(chan struct{}, 1),
		tokens:  map[string]*metadata.Token{},
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.isNode == nil {
		m.isNode = newNodeAddresses().contains
	}
	if m.refresh <= 0 {
		m.refresh = time.Minute
	}
	if m.cfg.ConcealedAttributes == nil {
		m.cfg.ConcealedAttributes = metadata.DefaultConcealedAttributes
	}
	if m.cfg.RetryMin <= 0 {
		m.cfg.RetryMin = time.Second
	}
	if m.cfg.RetryMax < m.cfg.RetryMin {
		m.cfg.RetryMax = max(30*time.Second, m.cfg.RetryMin)
	}
	m.m = newMetrics(cfg.Registerer)
	uc := cfg.Upstream
	hc := uc.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			Proxy:               nil, // metadata never goes through a proxy
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     60 * time.Second,
		}}
	}
	wrapped := *hc
	base := wrapped.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	wrapped.Transport = &tracker{base: base, m: m}
	uc.HTTPClient = &wrapped
	if uc.Logger == nil {
		uc.Logger = m.log
	}
	if uc.Clock == nil {
		uc.Clock = m.clock
	}
	m.up = mdclient.New(uc)
	srv, err := metadata.NewServer(metadata.Config{
		Logger:       m.log,
		Clock:        m.clock,
		Metrics:      metadata.NewMetrics(cfg.Registerer),
		AllowedHosts: cfg.AllowedHosts,
		Classify:     m.classify,
	}, nil)
	if err != nil {
		return nil, err
	}
	m.srv = srv
	return m, nil
}

// ServeHTTP answers one request as Run's listener would; long-poll
// timeouts need Run.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.srv.ServeHTTP(w, r) }

// Data returns the data being served, nil before the first mirror.
func (m *Mirror) Data() *metadata.Data { return m.srv.Data() }

// Run mirrors upstream and serves ln until ctx is done; it returns after
// every goroutine it started has ended. Until the first mirror succeeds,
// metadata requests are answered 503; when upstream fails later, the last
// mirrored data keeps being served and the mirror is reported stale.
func (m *Mirror) Run(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, dir := range []string{"instance/", "project/"} {
		wg.Go(func() { m.follow(ctx, dir) })
	}
	if m.cfg.ExposeServiceAccountTokens {
		wg.Go(func() { m.tokenLoop(ctx) })
	}
	err := m.srv.Run(ctx, ln)
	cancel()
	return err
}

// follow watches one upstream directory recursively until ctx is done.
func (m *Mirror) follow(ctx context.Context, dir string) {
	delay := m.cfg.RetryMin
	for {
		err := m.up.WatchRecursive(ctx, dir, func(value, _ string) error {
			delay = m.cfg.RetryMin
			m.update(dir, value)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		m.log.Warn("upstream metadata watch ended; watching again", "dir", dir, "retry_in", delay, "err", err)
		t := m.clock.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		delay = min(2*delay, m.cfg.RetryMax)
	}
}

// update records a new dump of dir and serves the result.
func (m *Mirror) update(dir, value string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if dir == "instance/" {
		m.instance = value
	} else {
		m.project = value
	}
	m.rebuildLocked()
}

// rebuildLocked converts the last dumps and serves them; a failure keeps
// the last good data. m.mu is held.
func (m *Mirror) rebuildLocked() {
	if m.instance == "" || m.project == "" {
		return
	}
	d, err := convert(m.instance, m.project, m.cfg.ConcealedAttributes, m.cfg.ExposeServiceAccountTokens)
	if err == nil {
		m.accounts = m.accounts[:0]
		for k := range d.Instances[0].ServiceAccounts {
			m.accounts = append(m.accounts, k)
			if tok := m.tokens[k]; tok != nil {
				sa := d.Instances[0].ServiceAccounts[k]
				sa.Token = tok
				d.Instances[0].ServiceAccounts[k] = sa
			}
		}
		sort.Strings(m.accounts)
		err = m.srv.SetData(d)
	}
	if err != nil {
		m.m.mirrorErrors.Inc()
		m.log.Error("upstream metadata not mirrored; pods keep the last mirrored data", "err", err)
		return
	}
	m.m.lastMirror.Set(float64(m.clock.Now().Unix()))
	if !m.mirrored {
		m.mirrored = true
		m.log.Info("upstream metadata mirrored; serving pods", "instance", d.Instances[0].Name)
		select {
		case m.kick <- struct{}{}:
		default:
		}
	}
}

// tokenLoop fetches the service-account tokens pods may have, at start and
// every TokenRefresh.
func (m *Mirror) tokenLoop(ctx context.Context) {
	for {
		t := m.clock.NewTimer(m.refresh)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-m.kick:
			t.Stop()
		case <-t.C():
		}
		m.mu.Lock()
		keys := append([]string{}, m.accounts...)
		m.mu.Unlock()
		got := map[string]*metadata.Token{}
		for _, k := range keys {
			tok, err := m.fetchToken(ctx, k)
			if err != nil {
				if ctx.Err() == nil {
					m.log.Warn("service-account token not fetched from upstream", "account", k, "err", err)
				}
				continue
			}
			got[k] = tok
		}
		m.mu.Lock()
		m.tokens = got
		m.rebuildLocked()
		m.mu.Unlock()
	}
}

func (m *Mirror) fetchToken(ctx context.Context, account string) (*metadata.Token, error) {
	v, err := m.up.Get(ctx, "instance/service-accounts/"+account+"/token")
	if err != nil {
		return nil, err
	}
	var t struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		TokenType   string `json:"token_type"`
	}
	if err := json.Unmarshal([]byte(v), &t); err != nil || t.AccessToken == "" {
		return nil, fmt.Errorf("token of %s: not GCE's token JSON", account)
	}
	// The value is served until the next refresh: promise no more than is
	// left then.
	exp := max(t.ExpiresIn-int(m.refresh/time.Second), 1)
	return &metadata.Token{AccessToken: t.AccessToken, ExpiresIn: exp, TokenType: t.TokenType}, nil
}

// upstreamResult records how an upstream exchange went, for the staleness
// metric and log.
func (m *Mirror) upstreamResult(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		m.m.upstreamUp.Set(1)
		if m.stale {
			m.stale = false
			m.log.Info("upstream metadata reachable again")
		}
		return
	}
	m.m.upstreamUp.Set(0)
	if !m.stale {
		m.stale = true
		if m.mirrored {
			m.log.Warn("upstream metadata failing; pods are served the last mirrored data (stale)", "err", err)
		} else {
			m.log.Warn("upstream metadata failing; pods get 503 until the first mirror", "err", err)
		}
	}
}

// tracker wraps the upstream transport to see failures that the client's
// Watch retries silently.
type tracker struct {
	base http.RoundTripper
	m    *Mirror
}

func (t *tracker) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	switch {
	case err != nil:
		if r.Context().Err() == nil {
			t.m.upstreamResult(err)
		}
	case resp.StatusCode >= 500:
		t.m.upstreamResult(fmt.Errorf("upstream answered %d", resp.StatusCode))
	case resp.Header.Get("Metadata-Flavor") != "Google":
		t.m.upstreamResult(fmt.Errorf("upstream answer lacks Metadata-Flavor: Google"))
	default:
		t.m.upstreamResult(nil)
	}
	return resp, err
}

// isStale reports whether the last upstream exchange failed.
func (m *Mirror) isStale() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stale
}
