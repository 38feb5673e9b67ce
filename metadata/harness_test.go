package metadata_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/metadata"
)

// Source addresses of the sample data (testdata/sample.yaml).
const (
	hostAddr    = "127.0.0.1" // node-1's host view
	podAddr     = "127.0.1.7" // a pod of node-1
	node2Host   = "127.0.0.2"
	unknownAddr = "127.0.3.1" // neither host nor pod of any instance
)

// Values concealed from node-1's pods in the sample data.
var concealedValues = []string{
	"CA_CERT: c2FtcGxlLWNh",
	"c2FtcGxlLWNh",
	"KUBELET_BOOTSTRAP_TOKEN",
	"abcdef.0123456789abcdef",
	"0123456789abcdef",
	"ya29.sample-node-token",
	"eyJhbGciOiJSUzI1NiJ9.sample-identity.c2ln",
	"sample-identity",
	"ghijkl.0123456789ghijkl", // node-2's kube-env
}

// Concealed attribute key names of the sample data, lower case.
var concealedKeys = []string{"kube-env", "nodetrust-bootstrap-token"}

const (
	v1      = "/computeMetadata/v1/"
	attrs   = v1 + "instance/attributes/"
	kubeEnv = attrs + "kube-env"
)

// loadSample returns a fresh copy of the sample data.
func loadSample(t testing.TB) *metadata.Data {
	t.Helper()
	d, err := metadata.LoadFile("testdata/sample.yaml")
	require.NoError(t, err)
	return d
}

// withAttr returns a copy of d's instance attribute maps with node-1's
// attribute k set to v; everything else is shared.
func withAttr(d *metadata.Data, k, v string) *metadata.Data {
	nd := *d
	nd.Instances = append([]metadata.Instance(nil), d.Instances...)
	a := map[string]string{}
	for kk, vv := range d.Instances[0].Attributes {
		a[kk] = vv
	}
	a[k] = v
	nd.Instances[0].Attributes = a
	return &nd
}

// testServer is a metadata server running on a loopback listener.
type testServer struct {
	srv  *metadata.Server
	reg  *prometheus.Registry
	addr string // host:port it listens on
}

// startServer runs a server for d on 127.0.0.1:0 until the test ends. cfg's
// Metrics, when nil, are registered with a fresh registry.
func startServer(t testing.TB, cfg metadata.Config, d *metadata.Data) *testServer {
	t.Helper()
	ts, stop := runServer(t, cfg, d)
	t.Cleanup(stop)
	return ts
}

// runServer is startServer with an explicit stop, which cancels Run and
// waits for it to return; stop may be called more than once.
func runServer(t testing.TB, cfg metadata.Config, d *metadata.Data) (*testServer, func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.Metrics == nil {
		cfg.Metrics = metadata.NewMetrics(reg)
	}
	srv, err := metadata.NewServer(cfg, d)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v, want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	return &testServer{srv: srv, reg: reg, addr: ln.Addr().String()}, stop
}

// client returns an HTTP client whose connections come from src and that
// does not follow redirects.
func client(t testing.TB, src string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: d.DialContext, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// do sends method target (a path and query) with the given headers;
// Metadata-Flavor: Google is added unless hdr has a Metadata-Flavor entry
// (an empty value means "send none"), and "Host" in hdr sets the Host.
func (ts *testServer) do(t testing.TB, c *http.Client, method, target string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+ts.addr+target, nil)
	require.NoError(t, err)
	if _, ok := hdr["Metadata-Flavor"]; !ok {
		req.Header.Set("Metadata-Flavor", "Google")
	}
	for k, v := range hdr {
		switch {
		case k == "Host":
			req.Host = v
		case k == "Metadata-Flavor" && v == "":
		default:
			req.Header[http.CanonicalHeaderKey(k)] = []string{v}
		}
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// get is do with GET and the default headers.
func (ts *testServer) get(t testing.TB, c *http.Client, target string) (*http.Response, string) {
	t.Helper()
	return ts.do(t, c, http.MethodGet, target, nil)
}

// rawRequest builds a request head for target with the usual headers plus
// extra lines ("Name: value").
func rawRequest(method, target string, extra ...string) string {
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\n")
	b.WriteString("Host: metadata.google.internal\r\n")
	b.WriteString("Metadata-Flavor: Google\r\n")
	for _, e := range extra {
		b.WriteString(e + "\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	return b.String()
}

// metric returns the sum of the series of metric name whose labels include
// labels (name, value pairs); 0 when none has been exported.
func (ts *testServer) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := ts.reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			}
		}
	}
	return sum
}

// watchers is the number of waiting wait_for_change requests.
func (ts *testServer) watchers(t testing.TB) float64 {
	t.Helper()
	return ts.metric(t, "nodetrust_metadata_watchers")
}

// waitWatchers waits until n long-polls are parked.
func (ts *testServer) waitWatchers(t testing.TB, n float64) {
	t.Helper()
	require.Eventually(t, func() bool { return ts.watchers(t) == n }, 5*time.Second, 5*time.Millisecond,
		"watchers gauge never reached %v", n)
}

// headerText flattens response headers for leak checks.
func headerText(h http.Header) string {
	var b strings.Builder
	for k, vs := range h {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}

// leaks returns what in s would reveal concealed data: a concealed value,
// or a concealed key name (case-insensitive).
func leaks(s string) []string {
	var out []string
	for _, v := range concealedValues {
		if strings.Contains(s, v) {
			out = append(out, v)
		}
	}
	low := strings.ToLower(s)
	for _, k := range concealedKeys {
		if strings.Contains(low, k) {
			out = append(out, k)
		}
	}
	return out
}
