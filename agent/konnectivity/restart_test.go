package konnectivity

import (
	"crypto/tls"
	"net/url"
	"testing"
	"time"
)

// TestServerRestart: the server stops and a new one starts on the same
// address; the agent reconnects within a few seconds and traffic flows.
func TestServerRestart(t *testing.T) {
	p := newPKI(t)
	s1 := startStockServer(t, p)
	kubelet, _ := fakeKubelet(t)
	ku, _ := url.Parse(kubelet.URL)
	cert := p.issue(t, "system:node:node1", []string{"system:nodes"}, false)
	c := runAgent(t, agentConfig(p, s1.agentAddr, []string{ku.Host},
		func() (*tls.Certificate, error) { return &cert, nil }))
	waitFor(t, "agent registered", func() bool { return ready(s1) && c.Connected() == 1 })
	hello(t, s1.frontAddr, ku.Host)

	s1.stop()
	waitFor(t, "stream down", func() bool { return c.Connected() == 0 })
	time.Sleep(300 * time.Millisecond) // let the agent fail a dial or two
	start := time.Now()
	s2 := startStockServerOpts(t, p, "server-1", 1, s1.agentAddr)
	waitFor(t, "agent reconnected", func() bool { return ready(s2) && c.Connected() == 1 })
	took := time.Since(start)
	if took > 3*time.Second {
		t.Fatalf("reconnect took %v", took)
	}
	t.Logf("reconnected %v after the restart", took)
	hello(t, s2.frontAddr, ku.Host)
}
