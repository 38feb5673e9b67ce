package tunnel_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"testing"
	"time"
)

func TestServerRestartAgentBackWithin2s(t *testing.T) {
	checkLeaks(t)
	ca, srv, a, port := setup(t)
	addr := srv.addr
	srv.stop()
	time.Sleep(300 * time.Millisecond) // down for a while: the agent backs off
	if a.c.Connected() != 0 {
		t.Errorf("agent still reports %d tunnels with the server down", a.c.Connected())
	}
	srv2 := startServer(t, ca, addr)
	d := srv2.waitNode(t, "node-1", 2*time.Second)
	t.Logf("agent reconnected %v after the server came back", d)
	hello(t, viaSocket(srv2), port)
}

func TestTwoReplicas(t *testing.T) {
	checkLeaks(t)
	ca := newCA(t)
	s1, s2 := startServer(t, ca, ""), startServer(t, ca, "")
	port := kubelet(t)
	a := startAgent(t, ca, ca.node(t, "node-1"), []string{"127.0.0.1:" + port}, s1.addr, s2.addr)
	s1.waitNode(t, "node-1", 5*time.Second)
	s2.waitNode(t, "node-1", 5*time.Second)
	for deadline := time.Now().Add(5 * time.Second); a.c.Connected() != 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("agent has %d tunnels, want 2", a.c.Connected())
		}
	}
	hello(t, viaSocket(s1), port)
	hello(t, viaSocket(s2), port)
	admin := ca.leaf(t, "admin", []string{"system:masters"}, false)
	hello(t, viaTLS(s2, ca, admin), port)
}

func TestForeignClientCertificateRefused(t *testing.T) {
	checkLeaks(t)
	ca, other := newCA(t), newCA(t)
	srv := startServer(t, ca, "")
	a := startAgent(t, ca, other.node(t, "node-1"), nil, srv.addr)
	deadline := time.Now().Add(5 * time.Second)
	for metric(t, a.reg, "nodetrust_agent_tunnel_dial_failures_total", "refused") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("agent did not record refused dials")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := srv.srv.Conns("node-1"); n != 0 || a.c.Connected() != 0 {
		t.Fatalf("foreign certificate got a tunnel: server %d, agent %d", n, a.c.Connected())
	}
	if got := metric(t, srv.reg, "nodetrust_tunnel_connections_refused_total", "tls"); got < 1 {
		t.Errorf("server tls refusals = %v", got)
	}
	// A node certificate of the cluster CA without O=system:nodes is refused after the handshake.
	a.stop()
	b := startAgent(t, ca, ca.leaf(t, "system:node:node-1", nil, false), nil, srv.addr)
	for metric(t, srv.reg, "nodetrust_tunnel_connections_refused_total", "not_node") < 1 {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("server did not refuse a certificate without system:nodes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b.c.Connected() != 0 || srv.srv.Conns("node-1") != 0 {
		t.Fatal("certificate without system:nodes got a tunnel")
	}
}

// TestRotationDuringTransfer rotates the client certificate in the middle
// of a multi-MB download: a new tunnel comes up, the old one drains, and
// not one byte is lost.
func TestRotationDuringTransfer(t *testing.T) {
	checkLeaks(t)
	ca, srv, a, port := setup(t)
	const size = 48 << 20
	want := sha256.New()
	io.CopyN(want, pattern(), size)

	c, _, err := viaSocket(srv).connect("node-1:" + port)
	if err != nil || c == nil {
		t.Fatal(err)
	}
	defer c.Close()
	r, err := c.get(fmt.Sprintf("/bytes?n=%d", size))
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	if _, err := io.CopyN(got, r.Body, 4<<20); err != nil {
		t.Fatal(err)
	}
	a.cert.Store(ca.node(t, "node-1")) // rotate
	deadline := time.Now().Add(5 * time.Second)
	for srv.srv.Conns("node-1") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no second tunnel after rotation")
		}
		time.Sleep(5 * time.Millisecond)
	}
	hello(t, viaSocket(srv), port) // new streams work during the drain
	n, err := io.Copy(got, r.Body)
	if err != nil || n != size-(4<<20) {
		t.Fatalf("rest of the transfer: %d bytes, %v", n, err)
	}
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("checksum mismatch after rotation")
	}
	for srv.srv.Conns("node-1") != 1 {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("old tunnel not drained: %d connections", srv.srv.Conns("node-1"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	hello(t, viaSocket(srv), port)
}
