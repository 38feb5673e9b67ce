package konnectivity

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDialTimeout: a destination that never answers gets DIAL_RSP with an
// error within DialTimeout, the CONNECT fails, and nothing is left behind.
func TestDialTimeout(t *testing.T) {
	p := newPKI(t)
	srv := startStockServer(t, p)
	const blackhole = "127.0.0.1:9"
	cert := p.issue(t, "system:node:node1", []string{"system:nodes"}, false)
	cfg := agentConfig(p, srv.agentAddr, []string{blackhole}, func() (*tls.Certificate, error) { return &cert, nil })
	cfg.DialTimeout = 300 * time.Millisecond
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var dials atomic.Int64
	c.dialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		<-ctx.Done() // a SYN that is never answered
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "agent registered", func() bool { return ready(srv) && c.Connected() == 1 })
	idle := ours()

	start := time.Now()
	conn, _, status := connect(t, srv.frontAddr, blackhole)
	conn.Close()
	took := time.Since(start)
	if status == 200 {
		t.Fatal("CONNECT to a destination that never answers: status 200")
	}
	if dials.Load() != 1 {
		t.Fatalf("%d dials, want 1", dials.Load())
	}
	if took > 2*time.Second {
		t.Fatalf("CONNECT failed after %v; DialTimeout is %v", took, cfg.DialTimeout)
	}
	t.Logf("CONNECT refused after %v (status %d)", took, status)
	waitFor(t, "the dial goroutine to end", func() bool { return ours() == idle })
	if got := testutil.ToFloat64(c.m.conns); got != 0 {
		t.Fatalf("connections_open = %v, want 0", got)
	}
}
