package konnectivity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// roundRobin is a TCP load balancer on loopback: connection i goes to
// backends[order[i%len(order)]].
type roundRobin struct {
	ln    net.Listener
	order []int
	n     atomic.Int64
	mu    sync.Mutex
	conns []net.Conn
}

func startRoundRobin(t *testing.T, backends []string, order []int) *roundRobin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := &roundRobin{ln: ln, order: order}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			i := lb.order[int(lb.n.Add(1)-1)%len(lb.order)]
			b, err := net.Dial("tcp", backends[i])
			if err != nil {
				c.Close()
				continue
			}
			lb.mu.Lock()
			lb.conns = append(lb.conns, c, b)
			lb.mu.Unlock()
			go func() { io.Copy(b, c); b.Close() }()
			go func() { io.Copy(c, b); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		lb.mu.Lock()
		for _, c := range lb.conns {
			c.Close()
		}
		lb.mu.Unlock()
	})
	return lb
}

// runAgent starts Run and stops it when the test ends, checking that it
// returns and leaves none of the package's goroutines behind.
func runAgent(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
		if n := ours(); n != 0 {
			t.Errorf("%d goroutines of this package left after Run returned", n)
		}
	})
	return c
}

func agentConfig(p *testPKI, server string, allow []string, cert func() (*tls.Certificate, error)) Config {
	return Config{
		Server:            server,
		NodeName:          "node1",
		ClientCertificate: cert,
		Roots:             func() (*x509.CertPool, error) { return p.pool, nil },
		Allow:             allow,
		DialTimeout:       2 * time.Second,
		StopTimeout:       10 * time.Second,
		BackoffMin:        50 * time.Millisecond,
		BackoffMax:        500 * time.Millisecond,
	}
}

func ready(s *stockServer) bool {
	ok, _ := s.ps.Readiness.Ready()
	return ok
}

// hello CONNECTs through front to target and GETs /hello.
func hello(t *testing.T, front, target string) {
	t.Helper()
	conn, br, status := connect(t, front, target)
	defer conn.Close()
	if status != 200 {
		t.Fatalf("CONNECT %s via %s: status %d", target, front, status)
	}
	if got := string(get(t, conn, br, "/hello")); got != "hello from kubelet" {
		t.Fatalf("body %q", got)
	}
}

// TestHAServerCount: two stock servers (servercount 2) behind a
// round-robin balancer that sends the second dial to the first server
// again. The agent closes that duplicate and ends with one stream to each.
func TestHAServerCount(t *testing.T) {
	p := newPKI(t)
	a := startStockServerOpts(t, p, "server-a", 2, "127.0.0.1:0")
	b := startStockServerOpts(t, p, "server-b", 2, "127.0.0.1:0")
	lb := startRoundRobin(t, []string{a.agentAddr, b.agentAddr}, []int{0, 0, 1})
	kubelet, _ := fakeKubelet(t)
	ku, _ := url.Parse(kubelet.URL)
	cert := p.issue(t, "system:node:node1", []string{"system:nodes"}, false)
	c := runAgent(t, agentConfig(p, lb.ln.Addr().String(), []string{ku.Host},
		func() (*tls.Certificate, error) { return &cert, nil }))

	waitFor(t, "a stream to each server", func() bool { return ready(a) && ready(b) && c.Connected() == 2 })
	if n := lb.n.Load(); n < 3 {
		t.Fatalf("balancer saw %d dials; want at least 3 (one duplicate)", n)
	}
	time.Sleep(300 * time.Millisecond)
	if got := c.Connected(); got != 2 {
		t.Fatalf("Connected() = %d after settling, want 2", got)
	}
	hello(t, a.frontAddr, ku.Host)
	hello(t, b.frontAddr, ku.Host)
}
