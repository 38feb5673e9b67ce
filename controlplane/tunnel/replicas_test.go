package tunnel_test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/tunnel"
)

// lb is a TCP load balancer on loopback that sends each new connection to
// the next backend of its schedule (the last entry repeats).
type lb struct {
	ln       net.Listener
	mu       sync.Mutex
	schedule []string
}

func startLB(t *testing.T, schedule ...string) *lb {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &lb{ln: ln, schedule: schedule}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			to := l.schedule[0]
			if len(l.schedule) > 1 {
				l.schedule = l.schedule[1:]
			}
			l.mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				up, err := net.Dial("tcp", to)
				if err != nil {
					return
				}
				defer up.Close()
				go func() {
					io.Copy(up, c)
					up.Close()
				}()
				io.Copy(c, up)
			})
		}
	})
	return l
}

// An agent given one load-balanced address keeps dialing until it holds a
// tunnel to each of the replicas the servers announce; a dial that lands
// on a replica it already holds is closed.
func TestLoadBalancedAddressReachesEveryReplica(t *testing.T) {
	ca := newCA(t)
	replica := func(id string) func(*tunnel.Config) {
		return func(c *tunnel.Config) { c.ServerID, c.ServerCount = id, 2 }
	}
	s1 := startServer(t, ca, "", replica("cp-a"))
	s2 := startServer(t, ca, "", replica("cp-b"))
	// The first two connections land on cp-a, then cp-b.
	balancer := startLB(t, s1.addr, s1.addr, s2.addr)
	port := kubelet(t)
	a := startAgent(t, ca, ca.node(t, "node-1"), []string{"127.0.0.1:" + port}, balancer.ln.Addr().String())

	s1.waitNode(t, "node-1", 5*time.Second)
	s2.waitNode(t, "node-1", 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for a.c.Connected() != 2 || s1.srv.Conns("node-1") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("agent has %d tunnels (cp-a sees %d), want one to each replica", a.c.Connected(), s1.srv.Conns("node-1"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	hello(t, viaSocket(s1), port)
	hello(t, viaSocket(s2), port)
}
