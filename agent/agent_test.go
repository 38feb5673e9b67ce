package agent_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	certv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/agent/csr"
	"github.com/nodetrust/nodetrust/controlplane/csrs"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
	"github.com/nodetrust/nodetrust/test/harness"
)

// node is one agent under test against an in-process server side.
type node struct {
	t     *testing.T
	env   *harness.Env
	cfg   *agent.Config
	a     *agent.Agent
	clk   *clock.Fake
	reg   *prometheus.Registry
	state string
}

type nodeOpts struct {
	serving  bool
	duration time.Duration
	md       *mdclient.Client
}

func newNode(t *testing.T, env *harness.Env, o nodeOpts) *node {
	t.Helper()
	clk, ok := env.Clock.(*clock.Fake)
	require.True(t, ok)
	state := t.TempDir()
	cfg, err := agent.ParseConfig([]byte("server: " + env.APIURL + "\nstateDir: " + state + "\ncheckInterval: 1m\n"))
	require.NoError(t, err)
	cfg.ClientCertDuration = agent.Duration(o.duration)
	if o.serving {
		cfg.Serving.Enabled = true
		cfg.Serving.NoAutoAddresses = true
		cfg.Serving.DNSNames = []string{env.Nodes[0]}
		cfg.Serving.IPs = []string{harness.HostAddr(0)}
	}
	md := o.md
	if md == nil {
		md = env.MetadataClient(0)
	}
	n := &node{t: t, env: env, cfg: cfg, clk: clk, reg: prometheus.NewRegistry(), state: state}
	var log *slog.Logger
	if os.Getenv("AGENT_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	n.a, err = agent.New(cfg, agent.Options{Clock: clk, Logger: log, Metadata: md, Registerer: n.reg, Rand: func() float64 { return 0.5 },
		Addresses: func() ([]netip.Addr, error) { return nil, nil }})
	require.NoError(t, err)
	return n
}

func (n *node) once(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return n.a.Once(ctx)
}

// onceTicking runs Once while moving the fake clock a second every few
// milliseconds, for flows that wait on the clock (polling, backoff).
func (n *node) onceTicking(timeout time.Duration) error {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				n.clk.Advance(time.Second)
			}
		}
	}()
	defer func() {
		close(stop)
		<-done
	}()
	return n.once(timeout)
}

// run starts Run and returns a stop function that waits for it.
func (n *node) run() func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.a.Run(ctx) }()
	stop := func() {
		cancel()
		require.NoError(n.t, <-done)
	}
	n.t.Cleanup(func() { cancel() })
	return stop
}

func (n *node) status() *agent.Status {
	s, err := agent.ReadStatus(filepath.Join(n.state, agent.StatusFile))
	require.NoError(n.t, err)
	return s
}

func (n *node) cred(name string) agent.CredentialStatus {
	for _, c := range n.a.Status().Credentials {
		if c.Name == name {
			return c
		}
	}
	n.t.Fatalf("no credential %s", name)
	return agent.CredentialStatus{}
}

func (n *node) csrCount() int {
	l, _ := n.env.CP.Store.List(csrs.Kind)
	return len(l)
}

func TestBootstrapFullFlow(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	n := newNode(t, env, nodeOpts{serving: true})
	require.NoError(t, n.once(30*time.Second))

	c := n.cred("client")
	assert.Equal(t, "valid", c.State)
	assert.Equal(t, "CN=system:node:node-1,O=system:nodes", c.Subject)
	assert.Contains(t, c.Issuer, "nodetrust")
	s := n.cred("serving")
	assert.Equal(t, "valid", s.State)
	assert.Equal(t, []string{"node-1"}, s.DNSNames)
	assert.Equal(t, []string{harness.HostAddr(0)}, s.IPs)
	assert.True(t, n.a.Healthy())

	// Files: the current link, a 0600 dated file, the kubeconfig, the CA.
	fi, err := os.Stat(c.Path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	kc, err := os.ReadFile(filepath.Join(n.state, "kubelet.kubeconfig"))
	require.NoError(t, err)
	assert.Contains(t, string(kc), c.Path)
	assert.Contains(t, string(kc), env.APIURL)
	_, err = os.Stat(filepath.Join(n.state, "ca.crt"))
	require.NoError(t, err)

	// Status file for `nodetrust status`.
	st := n.status()
	assert.Equal(t, "node-1", st.Node)
	assert.True(t, st.Healthy)
	var b strings.Builder
	st.Describe(&b, n.clk.Now())
	assert.Contains(t, b.String(), "client certificate: valid")
	assert.Contains(t, b.String(), "next rotation")

	// The bootstrap token never lands on disk or in the status.
	secret := env.Token[strings.IndexByte(env.Token, '.')+1:]
	filepath.Walk(n.state, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && info.Mode().IsRegular() {
			body, _ := os.ReadFile(p)
			assert.NotContains(t, string(body), secret, p)
		}
		return nil
	})

	// A second Once has nothing to do: no new CSR.
	before := n.csrCount()
	require.NoError(t, n.once(10*time.Second))
	assert.Equal(t, before, n.csrCount())
}

func TestRotationAtPlannedTimeWithNewKey(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	n := newNode(t, env, nodeOpts{duration: time.Hour})
	require.NoError(t, n.once(30*time.Second))
	first := n.cred("client")
	// Rand is 0.5: renewal at 80% of the issued lifetime.
	life := first.NotAfter.Sub(first.NotBefore)
	assert.WithinDuration(t, first.NotBefore.Add(life*8/10), first.NextRotation, time.Second)
	firstKey := readKey(t, first.Path)

	stop := n.run()
	defer stop()
	n.clk.Set(first.NextRotation.Add(time.Second))
	require.Eventually(t, func() bool {
		// Run may have armed its timer just before the jump: nudge it.
		n.clk.Advance(10 * time.Second)
		return n.cred("client").Serial != first.Serial
	}, 20*time.Second, 20*time.Millisecond)
	second := n.cred("client")
	assert.NotEqual(t, firstKey, readKey(t, second.Path), "a new key for each certificate")
	// The new certificate is visible a moment before the counter moves.
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(metric(t, n.reg, "nodetrust_agent_rotations_total", "renew")) == 1
	}, 5*time.Second, 5*time.Millisecond)
}

func TestExpiredCertificateRebootstrapsWithoutRestart(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	n := newNode(t, env, nodeOpts{duration: 10 * time.Minute})
	require.NoError(t, n.once(30*time.Second))
	first := n.cred("client")

	// The node was off past expiry.
	n.clk.Set(first.NotAfter.Add(time.Hour))
	assert.False(t, n.a.Healthy())
	require.NoError(t, n.once(30*time.Second))
	second := n.cred("client")
	assert.NotEqual(t, first.Serial, second.Serial)
	assert.True(t, second.NotAfter.After(n.clk.Now()))
	assert.Equal(t, 2.0, testutil.ToFloat64(metric(t, n.reg, "nodetrust_agent_rotations_total", "bootstrap")))
}

func TestCorruptFilesRebootstrap(t *testing.T) {
	corruptions := []struct {
		name  string
		write func(t *testing.T, path string)
	}{
		{"garbage", func(t *testing.T, p string) { overwrite(t, p, []byte("not a pem file\n")) }},
		{"truncated", func(t *testing.T, p string) {
			b, _ := os.ReadFile(p)
			overwrite(t, p, b[:len(b)/2])
		}},
		{"key does not match", func(t *testing.T, p string) {
			b, _ := os.ReadFile(p)
			i := strings.Index(string(b), "-----BEGIN PRIVATE KEY")
			other := newKeyPEM(t)
			overwrite(t, p, append(b[:i:i], other...))
		}},
		{"empty", func(t *testing.T, p string) { overwrite(t, p, nil) }},
	}
	for _, tt := range corruptions {
		t.Run(tt.name, func(t *testing.T) {
			env := harness.Start(t, harness.Options{})
			n := newNode(t, env, nodeOpts{})
			require.NoError(t, n.once(30*time.Second))
			first := n.cred("client")
			target, err := filepath.EvalSymlinks(first.Path)
			require.NoError(t, err)
			tt.write(t, target)

			require.NoError(t, n.once(30*time.Second))
			second := n.cred("client")
			assert.NotEqual(t, first.Serial, second.Serial)
			assert.Equal(t, "valid", second.State)
		})
	}
}

func TestControlPlaneDownForHoursThenBack(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	n := newNode(t, env, nodeOpts{duration: 10 * time.Hour})
	require.NoError(t, n.once(30*time.Second))
	first := n.cred("client")
	life := first.NotAfter.Sub(first.NotBefore)
	at := func(frac float64) time.Time { return first.NotBefore.Add(time.Duration(frac * float64(life))) }

	env.StopAPI()
	// Past the planned renewal (80% with this jitter) renewal fails; the
	// node stays healthy inside the renewal window...
	n.clk.Set(at(0.82))
	err := n.once(300 * time.Millisecond)
	require.ErrorIs(t, err, agent.ErrNotReady)
	c := n.cred("client")
	assert.Positive(t, c.Failures)
	assert.Contains(t, c.LastError, "connection refused")
	assert.Positive(t, testutil.ToFloat64(metric(t, n.reg, "nodetrust_agent_failures_total", "network")))
	assert.True(t, n.a.Healthy(), "still inside the renewal window")

	// ...and reports unhealthy past 90%, before the certificate expires.
	n.clk.Set(at(0.95))
	require.ErrorIs(t, n.once(300*time.Millisecond), agent.ErrNotReady)
	assert.False(t, n.a.Healthy())
	rec := httptest.NewRecorder()
	n.a.ServeHealth(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Contains(t, rec.Body.String(), "client certificate expires")
	assert.Contains(t, n.status().Credentials[0].State, "overdue")

	// The control plane comes back: the next attempt renews.
	env.StartAPI()
	n.clk.Advance(3 * time.Minute) // past any backoff
	require.NoError(t, n.once(30*time.Second))
	c = n.cred("client")
	assert.NotEqual(t, first.Serial, c.Serial)
	assert.Empty(t, c.LastError)
	assert.True(t, n.a.Healthy())
}

func TestMetadataDownAtBoot(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	// The metadata client points at a proxy that is not up yet.
	proxy := newLateProxy(t, env.MDAddr, harness.HostAddr(0))
	n := newNode(t, env, nodeOpts{md: mdclient.New(mdclient.Config{Host: proxy.addr, RetryMax: -1})})
	stop := n.run()
	defer stop()
	require.Eventually(t, func() bool { return n.cred("client").Failures >= 1 }, 10*time.Second, 10*time.Millisecond)
	assert.Contains(t, n.cred("client").LastError, "metadata")
	assert.Equal(t, 1.0, testutil.ToFloat64(metric(t, n.reg, "nodetrust_agent_failures_total", "metadata")))

	proxy.start()
	require.Eventually(t, func() bool {
		if n.clk.WaitForWaiters(1, time.Second) {
			n.clk.Advance(5 * time.Second)
		}
		return n.cred("client").State == "valid"
	}, 20*time.Second, 10*time.Millisecond)
}

func TestClockBehindKeepsCertificateAndSaysSo(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	n := newNode(t, env, nodeOpts{})
	require.NoError(t, n.once(30*time.Second))
	first := n.cred("client")
	before := n.csrCount()

	n.clk.Set(first.NotBefore.Add(-2 * time.Hour)) // the node's clock jumped back
	require.NoError(t, n.once(10*time.Second))
	c := n.cred("client")
	assert.Equal(t, first.Serial, c.Serial, "no new certificate for a wrong clock")
	assert.Contains(t, c.State, "clock is")
	assert.Equal(t, before, n.csrCount(), "no CSR flood")
}

func metric(t *testing.T, reg *prometheus.Registry, name, label string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetValue() == label {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	g.Set(sum)
	return g
}

// denyingAPI is a certificates.k8s.io/v1 endpoint that denies every CSR.
type denyingAPI struct {
	mu    sync.Mutex
	names map[string]bool
}

func (d *denyingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Query().Get("watch") != "" {
		http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","code":405}`, http.StatusMethodNotAllowed)
		return
	}
	var obj certv1.CertificateSigningRequest
	switch r.Method {
	case http.MethodPost:
		if err := json.NewDecoder(r.Body).Decode(&obj); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		d.names[obj.Name] = true
		d.mu.Unlock()
		obj.UID = types.UID("uid-" + obj.Name)
		obj.ResourceVersion = "1"
		w.WriteHeader(http.StatusCreated)
	case http.MethodGet:
		obj.Name = path.Base(r.URL.Path)
		obj.UID = types.UID("uid-" + obj.Name)
		obj.ResourceVersion = "2"
		obj.Spec.SignerName = "kubernetes.io/kube-apiserver-client-kubelet"
		obj.Status.Conditions = []certv1.CertificateSigningRequestCondition{{
			Type: certv1.CertificateDenied, Status: "True", Reason: "NotInInventory", Message: "machine unknown to the inventory",
		}}
	}
	obj.APIVersion, obj.Kind = "certificates.k8s.io/v1", "CertificateSigningRequest"
	json.NewEncoder(w).Encode(&obj)
}

func TestDeniedCSRFailsFastAndRetriesWithNewKey(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	api := &denyingAPI{names: map[string]bool{}}
	fake := httptest.NewTLSServer(api)
	t.Cleanup(fake.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fake.Certificate().Raw}), 0o644))

	n := newNode(t, env, nodeOpts{})
	n.cfg.Server, n.cfg.CAFile = fake.URL, caFile
	var err error
	n.a, err = agent.New(n.cfg, agent.Options{Clock: n.clk, Metadata: env.MetadataClient(0), Registerer: prometheus.NewRegistry()})
	require.NoError(t, err)

	err = n.onceTicking(500 * time.Millisecond)
	require.ErrorIs(t, err, agent.ErrNotReady)
	require.ErrorIs(t, err, csr.ErrDenied)
	c := n.cred("client")
	assert.Contains(t, c.LastError, "NotInInventory")
	assert.Contains(t, c.LastError, "machine unknown to the inventory")

	// The denied request is finished: the next attempt uses a new key, so a
	// new CSR name.
	require.ErrorIs(t, n.onceTicking(500*time.Millisecond), csr.ErrDenied)
	api.mu.Lock()
	defer api.mu.Unlock()
	assert.GreaterOrEqual(t, len(api.names), 2)
}
