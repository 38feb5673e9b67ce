package tunnel_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// setup starts a server, a fake kubelet and an agent for node-1 allowed
// to reach the kubelet.
func setup(t *testing.T) (*testCA, *cpServer, *agent, string) {
	ca := newCA(t)
	srv := startServer(t, ca, "")
	port := kubelet(t)
	a := startAgent(t, ca, ca.node(t, "node-1"), []string{"127.0.0.1:" + port}, srv.addr)
	srv.waitNode(t, "node-1", 5*time.Second)
	return ca, srv, a, port
}

func hello(t *testing.T, f frontend, port string) {
	t.Helper()
	c, resp, err := f.connect("node-1:" + port)
	if err != nil {
		t.Fatal(err)
	}
	if c == nil {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("CONNECT: %s %s", resp.Status, b)
	}
	defer c.Close()
	r, err := c.get("/hello")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != 200 || string(b) != "hello from kubelet\n" {
		t.Fatalf("GET /hello through the tunnel: %s %q", r.Status, b)
	}
}

func TestRequestThroughTunnel(t *testing.T) {
	checkLeaks(t)
	ca, srv, a, port := setup(t)
	hello(t, viaSocket(srv), port)
	hello(t, viaTLS(srv, ca, ca.leaf(t, "admin", []string{"system:masters"}, false)), port)
	if got := metric(t, a.reg, "nodetrust_agent_tunnel_bytes_total", "out"); got < 20 {
		t.Errorf("agent bytes out = %v", got)
	}
	if n := testutil.CollectAndCount(srv.reg, "nodetrust_tunnel_bytes_total"); n != 2 {
		t.Errorf("server byte counters: %d", n)
	}
}

func TestFrontendRefusals(t *testing.T) {
	checkLeaks(t)
	ca, srv, _, port := setup(t)
	for _, tc := range []struct {
		name   string
		f      frontend
		target string
		status int
		text   string
	}{
		{"node cert on TLS frontend", viaTLS(srv, ca, ca.node(t, "node-2")), "node-1:" + port, 403, "is a node"},
		{"unknown user", viaTLS(srv, ca, ca.leaf(t, "mallory", nil, false)), "node-1:" + port, 403, "neither in"},
		{"no tunnel", viaSocket(srv), "node-9:" + port, 503, "no tunnel from node node-9"},
		{"bad target", viaSocket(srv), "node_1:80", 400, "not <node-name>:<port>"},
		{"disallowed port", viaSocket(srv), "node-1:22", 403, "not in this node's tunnel allowlist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, err := tc.f.connect(tc.target)
			if err != nil {
				t.Fatal(err)
			}
			if c != nil {
				c.Close()
				t.Fatal("CONNECT succeeded")
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.text) {
				t.Fatalf("got %s %q, want %d containing %q", resp.Status, b, tc.status, tc.text)
			}
		})
	}
}

func TestDisallowedDestinationCounted(t *testing.T) {
	checkLeaks(t)
	_, srv, a, _ := setup(t)
	_, resp, err := viaSocket(srv).connect("node-1:10250") // the allowlist only has the fake kubelet
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %s", resp.Status)
	}
	if got := metric(t, a.reg, "nodetrust_agent_tunnel_stream_refusals_total", "not_allowed"); got != 1 {
		t.Errorf("not_allowed refusals = %v, want 1", got)
	}
	if got := metric(t, a.reg, "nodetrust_agent_tunnel_bytes_total", "in"); got != 0 {
		t.Errorf("bytes moved for a refused stream: %v", got)
	}
}

func TestManyConcurrentStreams(t *testing.T) {
	checkLeaks(t)
	_, srv, _, port := setup(t)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			c, resp, err := viaSocket(srv).connect("node-1:" + port)
			if err != nil || c == nil {
				errs <- fmt.Errorf("stream %d: %v %v", i, err, resp)
				return
			}
			defer c.Close()
			r, err := c.get(fmt.Sprintf("/bytes?n=%d", 100<<10))
			if err != nil {
				errs <- err
				return
			}
			if got, _ := io.Copy(io.Discard, r.Body); got != 100<<10 {
				errs <- fmt.Errorf("stream %d: got %d bytes", i, got)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestStalledStreamDoesNotBlockOthers stops reading one large download and
// checks that other streams on the same tunnel still run at full speed.
func TestStalledStreamDoesNotBlockOthers(t *testing.T) {
	checkLeaks(t)
	_, srv, _, port := setup(t)
	const big = 64 << 20
	stalled, _, err := viaSocket(srv).connect("node-1:" + port)
	if err != nil || stalled == nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	r, err := stalled.get(fmt.Sprintf("/bytes?n=%d", big))
	if err != nil {
		t.Fatal(err)
	}
	io.CopyN(io.Discard, r.Body, 1<<20) // then stop reading: the windows fill up
	time.Sleep(200 * time.Millisecond)

	start := time.Now()
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			c, _, err := viaSocket(srv).connect("node-1:" + port)
			if err != nil || c == nil {
				t.Error("connect failed", err)
				return
			}
			defer c.Close()
			r, err := c.get(fmt.Sprintf("/bytes?n=%d", 4<<20))
			if err != nil {
				t.Error(err)
				return
			}
			if n, _ := io.Copy(io.Discard, r.Body); n != 4<<20 {
				t.Errorf("got %d bytes", n)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("40 MiB on other streams took %v while one stream was stalled", d)
	}
	t.Logf("10 x 4 MiB next to a stalled stream: %v", time.Since(start))
	// The stalled stream resumes intact.
	if n, err := io.Copy(io.Discard, r.Body); err != nil || n != big-(1<<20) {
		t.Fatalf("stalled stream resumed with %d bytes, %v", n, err)
	}
}
