package mdlocal

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// The node-local server listens on loopback. 127.0.0.1 is an address of the
// node's lo, so the kernel classifier calls it the host; 127.0.0.2 is
// routed to lo but is no interface's address, so it is a pod.
const (
	hostSrc = "127.0.0.1"
	podSrc  = "127.0.0.2"
)

const (
	v1      = "/computeMetadata/v1/"
	attrs   = v1 + "instance/attributes/"
	kubeEnv = attrs + "kube-env"
)

// secrets must never reach a pod, in any form.
var secrets = []string{
	"kube-env", "KUBELET_BOOTSTRAP_TOKEN", "abcdef.0123456789abcdef", "0123456789abcdef",
	"nodetrust-bootstrap-token", "ya29.node-token", "sample-identity",
}

func leaks(s string) []string {
	var out []string
	for _, x := range secrets {
		if strings.Contains(strings.ToLower(s), strings.ToLower(x)) {
			out = append(out, x)
		}
	}
	return out
}

func upstreamData(location string) *metadata.Data {
	return &metadata.Data{
		Project: metadata.Project{ProjectID: "demo-project", NumericProjectID: 123456789012,
			Attributes: map[string]string{"cluster-name": "demo"}},
		Instances: []metadata.Instance{{
			Name: "node-1", ID: 4520031799277581759, Zone: "europe-west1-b", Hostname: "node-1.c.demo-project.internal",
			MachineType: "e2-standard-2", Tags: []string{"nodetrust"},
			NetworkInterfaces: []metadata.NetworkInterface{{IP: "10.128.0.2", MAC: "42:01:0a:80:00:02", Network: "default",
				Gateway: "10.128.0.1", Subnetmask: "255.255.240.0", MTU: 1460,
				AccessConfigs: []metadata.AccessConfig{{ExternalIP: "203.0.113.10"}}}},
			Attributes: map[string]string{
				"kube-env":                  "KUBELET_BOOTSTRAP_TOKEN: abcdef.0123456789abcdef\n",
				"nodetrust-bootstrap-token": "abcdef.0123456789abcdef",
				"cluster-location":          location,
			},
			ServiceAccounts: map[string]metadata.ServiceAccount{"default": {
				Email:    "node-1@demo-project.iam.gserviceaccount.com",
				Scopes:   []string{"https://www.googleapis.com/auth/cloud-platform"},
				Token:    &metadata.Token{AccessToken: "ya29.node-token", ExpiresIn: 3599},
				Identity: "eyJ.sample-identity.sig",
			}},
			HostAddresses: []string{hostSrc},
		}},
	}
}

// upstream is an in-process upstream metadata server on 127.0.0.1.
type upstream struct {
	srv  *metadata.Server
	addr string
	stop func()
}

func startUpstream(t *testing.T, d *metadata.Data) *upstream {
	t.Helper()
	srv, err := metadata.NewServer(metadata.Config{}, d)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", hostSrc+":0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(ctx, ln) }()
	var once sync.Once
	u := &upstream{srv: srv, addr: ln.Addr().String(), stop: func() { once.Do(func() { cancel(); <-done }) }}
	t.Cleanup(u.stop)
	return u
}

// local is a running mirror.
type local struct {
	m    *Mirror
	addr string
}

func startMirror(t *testing.T, upstreamAddr string, mod func(*Config)) *local {
	t.Helper()
	cfg := Config{
		Upstream: mdclient.Config{Host: upstreamAddr, RetryMax: -1, WatchTimeout: 5 * time.Second,
			WatchBackoffMin: 20 * time.Millisecond, WatchBackoffMax: 100 * time.Millisecond, RequestTimeout: 2 * time.Second},
		RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", hostSrc+":0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Error("Mirror.Run did not return after cancel")
		}
	})
	return &local{m: m, addr: ln.Addr().String()}
}

func (l *local) waitMirrored(t *testing.T, ok func(*metadata.Data) bool) {
	t.Helper()
	require.Eventually(t, func() bool {
		d := l.m.Data()
		return d != nil && (ok == nil || ok(d))
	}, 20*time.Second, 5*time.Millisecond, "upstream never mirrored")
}

// raw sends target byte for byte from src and returns the answer.
func (l *local) raw(t *testing.T, src, method, target string, extra ...string) (*http.Response, string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", l.addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata-Flavor: Google\r\nConnection: close\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	_, err = io.WriteString(c, b.String())
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

func (l *local) get(t *testing.T, src, target string) (*http.Response, string) {
	return l.raw(t, src, http.MethodGet, target)
}

func TestPodsNeverSeeSecrets(t *testing.T) {
	up := startUpstream(t, upstreamData("europe-west1"))
	l := startMirror(t, up.addr, nil)
	l.waitMirrored(t, nil)

	// A sample of metadata/attack_test.go's suite, sent as a pod would.
	attacks := []struct {
		target string
		extra  []string
		want   int
	}{
		{target: kubeEnv, want: 404},
		{target: attrs + "nodetrust-bootstrap-token", want: 404},
		{target: kubeEnv + "?alt=json", want: 404},
		{target: kubeEnv + "/", want: 404},
		{target: attrs + "%6b%75%62%65-env", want: 404},
		{target: attrs + "KUBE-ENV", want: 404},
		{target: v1 + "instance/attributes//kube-env", want: 400},
		{target: v1 + "instance/../instance/attributes/kube-env", want: 400},
		{target: v1 + "instance/attributes%2Fkube-env", want: 400},
		{target: kubeEnv + "?alt=text;recursive=true", want: 400},
		{target: attrs, want: 200},
		{target: attrs + "?recursive=true", want: 200},
		{target: attrs + "?recursive=true&alt=text", want: 200},
		{target: v1 + "instance/?recursive=true", want: 200},
		{target: v1 + "?recursive=true", want: 200},
		{target: v1 + "?recursive=true&alt=text", want: 200},
		{target: "/?recursive=true", want: 200},
		{target: attrs + "?recursive", want: 200},
		{target: attrs + "?%72%65%63%75%72%73%69%76%65=true", want: 200},
		{target: attrs + "?recursive%3Dtrue", want: 400},
		{target: attrs + "?wait_for_change=true&last_etag=NONE", want: 200},
		{target: v1 + "?recursive=true&alt=json&wait_for_change=true&last_etag=NONE&timeout_sec=60", want: 200},
		{target: "/computeMetadata/v1beta1/instance/attributes/kube-env", want: 403},
		{target: "/0.1/meta-data/attributes/kube-env", want: 403},
		{target: v1 + "instance/service-accounts/default/token", want: 404},
		{target: v1 + "instance/service-accounts/node-1@demo-project.iam.gserviceaccount.com/token", want: 404},
		{target: v1 + "instance/service-accounts/default/identity?audience=x", want: 404},
		{target: v1 + "instance/service-accounts/default/?recursive=true", want: 200},
		{target: "http://169.254.169.254/computeMetadata/v1/instance/attributes/kube-env", want: 400},
		{target: kubeEnv, extra: []string{"X-Forwarded-For: 127.0.0.1"}, want: 403},
		{target: kubeEnv, extra: []string{"Forwarded: for=127.0.0.1"}, want: 403},
	}
	for _, a := range attacks {
		resp, body := l.raw(t, podSrc, http.MethodGet, a.target, a.extra...)
		assert.Equal(t, a.want, resp.StatusCode, "%s: %s", a.target, body)
		assert.Empty(t, leaks(body), "%s leaks: %s", a.target, body)
		assert.Equal(t, "Google", resp.Header.Get("Metadata-Flavor"), a.target)
	}

	// Concealed, not empty.
	_, body := l.get(t, podSrc, v1+"?recursive=true")
	assert.Contains(t, body, `"cluster-location":"europe-west1"`)
	assert.Contains(t, body, `"projectId":"demo-project"`)
	assert.Contains(t, body, `"zone":"projects/123456789012/zones/europe-west1-b"`)
	assert.Contains(t, body, `"email":"node-1@demo-project.iam.gserviceaccount.com"`)
	_, body = l.get(t, podSrc, v1+"instance/id")
	assert.Equal(t, "4520031799277581759", body)
}

func TestHostSeesSecrets(t *testing.T) {
	up := startUpstream(t, upstreamData("europe-west1"))
	l := startMirror(t, up.addr, nil)
	l.waitMirrored(t, nil)
	resp, body := l.get(t, hostSrc, kubeEnv)
	require.Equal(t, 200, resp.StatusCode)
	assert.Contains(t, body, "abcdef.0123456789abcdef")
	_, body = l.get(t, hostSrc, attrs)
	assert.Contains(t, body, "nodetrust-bootstrap-token\n")
	// Tokens are not in upstream's recursive dumps, and not fetched unless
	// they are exposed: the host reaches upstream itself for them.
	resp, _ = l.get(t, hostSrc, v1+"instance/service-accounts/default/token")
	assert.Equal(t, 404, resp.StatusCode)
}

func TestConcealedChangeDoesNotWakePods(t *testing.T) {
	for _, target := range []string{attrs, v1 + "instance/?recursive=true", v1 + "?recursive=true&alt=json"} {
		t.Run(target, func(t *testing.T) {
			up := startUpstream(t, upstreamData("europe-west1"))
			l := startMirror(t, up.addr, nil)
			l.waitMirrored(t, nil)
			resp, before := l.get(t, podSrc, target)
			require.Equal(t, 200, resp.StatusCode)
			etag := resp.Header.Get("ETag")
			sep := "?"
			if strings.Contains(target, "?") {
				sep = "&"
			}
			type answer struct {
				resp *http.Response
				body string
			}
			got := make(chan answer, 1)
			go func() {
				r, b := l.get(t, podSrc, target+sep+"wait_for_change=true&timeout_sec=60&last_etag="+etag)
				got <- answer{r, b}
			}()

			// Rotate the concealed values upstream and wait until the host
			// view of the mirror has the new ones.
			d := upstreamData("europe-west1")
			d.Instances[0].Attributes["kube-env"] = "KUBELET_BOOTSTRAP_TOKEN: zyxwvu.rotated" + target
			d.Instances[0].Attributes["nodetrust-bootstrap-token"] = "zyxwvu.rotated" + target
			require.NoError(t, up.srv.SetData(d))
			l.waitMirrored(t, func(d *metadata.Data) bool {
				return strings.Contains(d.Instances[0].Attributes["kube-env"], "rotated"+target)
			})
			_, hostBody := l.get(t, hostSrc, kubeEnv)
			require.Contains(t, hostBody, "rotated")
			resp, now := l.get(t, podSrc, target)
			assert.Equal(t, etag, resp.Header.Get("ETag"), "the pod's ETag moved with a concealed value")
			assert.Equal(t, before, now)
			select {
			case a := <-got:
				t.Fatalf("a pod's long-poll woke on a concealed change: %d %s", a.resp.StatusCode, a.body)
			case <-time.After(200 * time.Millisecond):
			}

			// A visible change does wake it.
			visible := upstreamData("us-central1")
			visible.Instances[0].Attributes["cluster-zone"] = "us-central1-a"
			require.NoError(t, up.srv.SetData(visible))
			select {
			case a := <-got:
				assert.Equal(t, 200, a.resp.StatusCode)
				assert.Contains(t, a.body, "cluster-zone")
				assert.Empty(t, leaks(a.body))
			case <-time.After(20 * time.Second):
				t.Fatal("a visible upstream change did not wake the pod's long-poll")
			}
		})
	}
}

func TestUpstreamDownBeforeFirstMirror(t *testing.T) {
	// An address nothing listens on.
	ln, err := net.Listen("tcp", hostSrc+":0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	ln.Close()
	l := startMirror(t, dead, nil)
	require.Eventually(t, func() bool { return testutil.ToFloat64(l.m.m.upstreamUp) == 0 && l.m.isStale() }, 20*time.Second, 5*time.Millisecond)
	for _, src := range []string{podSrc, hostSrc} {
		resp, body := l.get(t, src, v1+"instance/name")
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, body)
		assert.Equal(t, "Google", resp.Header.Get("Metadata-Flavor"))
	}
	assert.Nil(t, l.m.Data())
}

func TestUpstreamDownLater(t *testing.T) {
	up := startUpstream(t, upstreamData("europe-west1"))
	l := startMirror(t, up.addr, nil)
	l.waitMirrored(t, nil)
	require.Eventually(t, func() bool { return testutil.ToFloat64(l.m.m.upstreamUp) == 1 }, 20*time.Second, 5*time.Millisecond)
	assert.NotZero(t, testutil.ToFloat64(l.m.m.lastMirror))
	up.stop()
	require.Eventually(t, func() bool { return testutil.ToFloat64(l.m.m.upstreamUp) == 0 }, 20*time.Second, 5*time.Millisecond,
		"the mirror does not report upstream down")
	resp, body := l.get(t, podSrc, attrs+"cluster-location")
	assert.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "europe-west1", body)
	resp, body = l.get(t, podSrc, kubeEnv)
	assert.Equal(t, 404, resp.StatusCode)
	assert.Empty(t, leaks(body))
}

func TestExposedTokens(t *testing.T) {
	up := startUpstream(t, upstreamData("europe-west1"))
	l := startMirror(t, up.addr, func(c *Config) {
		c.ExposeServiceAccountTokens = true
		c.TokenRefresh = time.Minute
	})
	var body string
	require.Eventually(t, func() bool {
		var resp *http.Response
		resp, body = l.get(t, podSrc, v1+"instance/service-accounts/default/token")
		return resp.StatusCode == 200
	}, 20*time.Second, 10*time.Millisecond)
	assert.Contains(t, body, `"access_token":"ya29.node-token"`)
	assert.Contains(t, body, `"expires_in":3539`, "expires_in must not outlive the refresh")
	resp, _ := l.get(t, podSrc, v1+"instance/service-accounts/default/identity?audience=x")
	assert.Equal(t, 404, resp.StatusCode, "identity tokens are never mirrored")
	resp, _ = l.get(t, podSrc, kubeEnv)
	assert.Equal(t, 404, resp.StatusCode)
}

func TestConfiguredConcealedAttributes(t *testing.T) {
	up := startUpstream(t, upstreamData("europe-west1"))
	l := startMirror(t, up.addr, func(c *Config) {
		c.ConcealedAttributes = []string{"cluster-location", "kube-env", "nodetrust-bootstrap-token"}
	})
	l.waitMirrored(t, nil)
	resp, _ := l.get(t, podSrc, attrs+"cluster-location")
	assert.Equal(t, 404, resp.StatusCode)
	_, body := l.get(t, podSrc, attrs)
	assert.Empty(t, body)
}

func TestClassify(t *testing.T) {
	m := &Mirror{}
	calls := 0
	na := &nodeAddresses{list: func() ([]netip.Addr, error) {
		calls++
		return []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fe80::1")}, nil
	}}
	m.isNode = na.contains
	for _, tt := range []struct {
		remote string
		want   metadata.View
	}{
		{"10.0.0.5:1234", metadata.ViewHost},
		{"[::ffff:10.0.0.5]:1234", metadata.ViewHost},
		{"[fe80::1]:80", metadata.ViewHost},
		{"10.4.0.7:1234", metadata.ViewPod},
		{"garbage", metadata.ViewPod},
		{"", metadata.ViewPod},
	} {
		r := &http.Request{RemoteAddr: tt.remote}
		inst, v := m.classify(r)
		assert.Equal(t, tt.want, v, tt.remote)
		assert.Empty(t, inst)
	}
	m.isNode = func(netip.Addr) (bool, error) { return true, errors.New("netlink down") }
	_, v := m.classify(&http.Request{RemoteAddr: "10.0.0.5:1"})
	assert.Equal(t, metadata.ViewPod, v, "unsure means pod")
	na.list = func() ([]netip.Addr, error) { return nil, errors.New("netlink down") }
	m.isNode = na.contains
	_, v = m.classify(&http.Request{RemoteAddr: "10.0.0.5:1"})
	assert.Equal(t, metadata.ViewPod, v, "a failed listing means pod")
}
