//go:build linux

package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/controlplane/apiserver"
)

// Rotation scenarios (issue #9): agents poll the trust bundle every
// second and hold a client and a serving certificate, each renewed (new
// key, authenticated by the current client certificate) when the active
// CA changes and on its own schedule: the signer (in-process, see
// ClusterOptions.InProcessSigner) issues certificates valid from 100 s
// ago to 45 s ahead, so each one is renewed 1.5 to 30 s after it was
// issued, throughout the rotation. The control plane publishes the bundle
// into the metadata data file.
func startRotationCluster(t *testing.T, nodes int) *Cluster {
	t.Helper()
	requireRoot(t)
	return StartCluster(t, ClusterOptions{
		Binary:          bin,
		Topology:        TopologyOptions{Nodes: nodes, PodsPerNode: 0},
		PublishBundle:   true,
		InProcessSigner: &SignerLifetimes{MaxDuration: 45 * time.Second, Backdate: 100 * time.Second},
		AgentConfig: func(n *Node, cfg map[string]any) {
			cfg["trust"] = map[string]any{"checkInterval": "1s"}
			cfg["checkInterval"] = "1s"
			cfg["serving"] = map[string]any{"enabled": true, "noAutoAddresses": true, "ips": []string{n.Net.IP}}
		},
	})
}

// rotate runs `nodetrust controlplane rotate <verb> --json` on the host.
func (c *Cluster) rotate(t *testing.T, verb string) apiserver.RotationStatus {
	t.Helper()
	out, err := c.runIn(c.Topo.Host, "controlplane", "rotate", verb, "--data-dir", c.CPDir, "--json")
	c.must(err)
	var st apiserver.RotationStatus
	c.must(json.Unmarshal(out, &st))
	return st
}

// waitPhase waits until the rotation is in phase.
func (c *Cluster) waitPhase(t *testing.T, phase string) {
	t.Helper()
	c.Eventually(30*time.Second, "rotation phase "+phase, func() error {
		if st := c.rotate(t, "status"); st.Phase != phase {
			return fmt.Errorf("phase %s", st.Phase)
		}
		return nil
	}, c.API)
}

// caByPin returns the CA with pin from the control plane's bundle file.
func (c *Cluster) caByPin(t *testing.T, pin string) *x509.Certificate {
	t.Helper()
	for _, ca := range pemFileCerts(filepath.Join(c.CPDir, "pki", "ca.crt")) {
		if bootstrap.SPKIPin(ca) == pin {
			return ca
		}
	}
	t.Fatalf("no CA %s in the control plane's ca.crt", pin)
	return nil
}

func pemFileCerts(path string) []*x509.Certificate {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// onCA checks that n's client and serving certificates were issued by ca and that its
// ca.crt holds exactly the CAs with pins.
func (n *Node) onCA(ca *x509.Certificate, pins ...string) error {
	for _, cred := range []string{"client", "server"} {
		certs := pemFileCerts(filepath.Join(n.StateDir, "pki", "kubelet-"+cred+"-current.pem"))
		if len(certs) == 0 {
			return fmt.Errorf("%s: no %s certificate", n.Name, cred)
		}
		if err := certs[0].CheckSignatureFrom(ca); err != nil {
			return fmt.Errorf("%s: %s certificate (issuer %s) not issued by %s", n.Name, cred, certs[0].Issuer, bootstrap.SPKIPin(ca))
		}
	}
	var got []string
	for _, r := range pemFileCerts(filepath.Join(n.StateDir, "ca.crt")) {
		got = append(got, bootstrap.SPKIPin(r))
	}
	if !slices.Equal(got, pins) {
		return fmt.Errorf("%s: ca.crt holds %v, want %v", n.Name, got, pins)
	}
	return nil
}

// traffic sends requests through the tunnels to every node's kubelet-like
// endpoint without pause: each round a new CONNECT (new stream), and on a
// connection kept open from the start (HTTP keep-alive through one
// tunneled stream). It counts successes and keeps every failure.
type traffic struct {
	c      *Cluster
	ok     atomic.Int64
	mu     sync.Mutex
	fails  []string
	first  time.Time // of the first failure
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (c *Cluster) startTraffic(t *testing.T, nodes ...*Node) *traffic {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := &traffic{c: c, cancel: cancel}
	for _, n := range nodes {
		target := fmt.Sprintf("%s:10250", n.Name)
		conn, err := c.Connect(ctx, target)
		c.must(err)
		var once sync.Once
		kept := &http.Client{Transport: &http.Transport{
			DialContext: func(context.Context, string, string) (net.Conn, error) {
				var cn net.Conn
				once.Do(func() { cn = conn })
				if cn == nil {
					return nil, fmt.Errorf("the kept connection to %s was closed", target)
				}
				return cn, nil
			},
			MaxIdleConnsPerHost: 1,
		}, Timeout: 10 * time.Second}
		tr.wg.Go(func() {
			tr.loop(ctx, "new stream to "+target, func() error { _, err := c.GetThroughTunnel(target, "/healthz"); return err })
		})
		tr.wg.Go(func() {
			tr.loop(ctx, "kept connection to "+target, func() error {
				resp, err := kept.Get("http://" + target + "/kept")
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
				}
				return nil
			})
		})
	}
	t.Cleanup(tr.stop)
	return tr
}

func (tr *traffic) loop(ctx context.Context, what string, get func() error) {
	for ctx.Err() == nil {
		if err := get(); err != nil {
			if ctx.Err() != nil {
				return
			}
			tr.mu.Lock()
			if len(tr.fails) == 0 {
				tr.first = time.Now()
			}
			tr.fails = append(tr.fails, fmt.Sprintf("%s %s: %v", time.Now().UTC().Format("15:04:05.000"), what, err))
			tr.mu.Unlock()
		} else {
			tr.ok.Add(1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (tr *traffic) stop() {
	tr.cancel()
	tr.wg.Wait()
}

// check stops the traffic and fails the test on any failed request.
func (tr *traffic) check(t *testing.T) {
	t.Helper()
	tr.stop()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	t.Logf("requests through the tunnels: %d succeeded, %d failed", tr.ok.Load(), len(tr.fails))
	if len(tr.fails) > 0 {
		t.Fatalf("%d requests failed, first ones: %v\nlogs around the first failure:\n%s", len(tr.fails), tr.fails[:min(len(tr.fails), 10)],
			tr.c.logsAround(tr.first, 2*time.Second))
	}
	if tr.ok.Load() < 100 {
		t.Fatalf("only %d requests made", tr.ok.Load())
	}
}

// TestCARotation: a full rotation start -> update-servers -> complete
// under continuous requests through the tunnels with renewing
// certificates: no request fails, both nodes end on the new CA trusting
// only it. A third node, off during the whole rotation, comes back and
// recovers through metadata (the bundle) and bootstrap (the token).
func TestCARotation(t *testing.T) {
	c := startRotationCluster(t, 3)
	on, away := c.Nodes[:2], c.Nodes[2]
	for _, n := range c.Nodes {
		n.ServeKubelet(t)
		n.StartAgent()
	}
	for _, n := range c.Nodes {
		n.WaitCertified(60 * time.Second)
		n.WaitTunnel(30*time.Second, 10250, "/healthz")
	}
	st := c.rotate(t, "status")
	oldPin := st.Active
	away.StopAgent()

	tr := c.startTraffic(t, on...)
	time.Sleep(time.Second) // traffic before the rotation, too
	st = c.rotate(t, "start")
	newPin := st.Active
	newCA := c.caByPin(t, newPin)
	for _, n := range on {
		c.Eventually(30*time.Second, n.Name+" on the new CA", func() error { return n.onCA(newCA, newPin, oldPin) }, n.Agent)
	}
	// The node that is away still counts as on the old CA, so the control
	// plane stays in update-clients: complete forces update-servers.
	c.Eventually(30*time.Second, "one node left on the old CA", func() error {
		if st := c.rotate(t, "status"); st.Phase != "update-clients" || st.NodesNotOnActive != 1 {
			return fmt.Errorf("phase %s, %d nodes not on the active CA", st.Phase, st.NodesNotOnActive)
		}
		return nil
	}, c.API)
	if st = c.rotate(t, "complete"); st.Phase != "update-servers" {
		t.Fatalf("phase %s after the first complete, want update-servers", st.Phase)
	}
	time.Sleep(3 * time.Second) // servers on the new CA, under traffic
	st = c.rotate(t, "complete")
	if st.Phase != "idle" {
		t.Fatalf("phase %s after complete, want idle", st.Phase)
	}
	for _, n := range on {
		c.Eventually(30*time.Second, n.Name+" trusts only the new CA", func() error { return n.onCA(newCA, newPin) }, n.Agent)
	}
	time.Sleep(2 * time.Second) // traffic after the rotation, too
	tr.check(t)
	logRenewals(t, on...)

	// The node that was away.
	away.StartAgent()
	c.Eventually(60*time.Second, away.Name+" recovered on the new CA", func() error { return away.onCA(newCA, newPin) }, away.Agent)
	away.WaitCertified(30 * time.Second)
	away.WaitTunnel(30*time.Second, 10250, "/healthz")
	if log := away.Agent.Tail(1 << 20); !containsAll(log, "reading the CA bundle from metadata", "bootstrapping from metadata") {
		t.Errorf("%s's log does not say how it recovered:\n%s", away.Name, away.Agent.Tail(4096))
	}
}

// TestCARotationRollback: start, then rollback in update-servers, then
// complete: requests keep succeeding and every node ends on the old CA,
// trusting only it.
func TestCARotationRollback(t *testing.T) {
	c := startRotationCluster(t, 2)
	for _, n := range c.Nodes {
		n.ServeKubelet(t)
		n.StartAgent()
	}
	for _, n := range c.Nodes {
		n.WaitCertified(60 * time.Second)
		n.WaitTunnel(30*time.Second, 10250, "/healthz")
	}
	oldPin := c.rotate(t, "status").Active
	oldCA := c.caByPin(t, oldPin)
	tr := c.startTraffic(t, c.Nodes...)
	st := c.rotate(t, "start")
	newPin := st.Active
	newCA := c.caByPin(t, newPin)
	for _, n := range c.Nodes {
		c.Eventually(30*time.Second, n.Name+" on the new CA", func() error { return n.onCA(newCA, newPin, oldPin) }, n.Agent)
	}
	c.waitPhase(t, "update-servers")
	time.Sleep(2 * time.Second) // servers on the new CA, under traffic
	st = c.rotate(t, "rollback")
	if st.Phase != "rollback" || st.Active != oldPin {
		t.Fatalf("after rollback: phase %s, active %s; want rollback, %s", st.Phase, st.Active, oldPin)
	}
	for _, n := range c.Nodes {
		c.Eventually(30*time.Second, n.Name+" back on the old CA", func() error { return n.onCA(oldCA, oldPin, newPin) }, n.Agent)
	}
	st = c.rotate(t, "complete")
	if st.Phase != "idle" {
		t.Fatalf("phase %s after complete, want idle", st.Phase)
	}
	for _, n := range c.Nodes {
		c.Eventually(30*time.Second, n.Name+" trusts only the old CA", func() error { return n.onCA(oldCA, oldPin) }, n.Agent)
	}
	time.Sleep(2 * time.Second)
	tr.check(t)
	logRenewals(t, c.Nodes...)
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// logRenewals logs how many certificates each node's agent renewed (the
// rotation's re-issues and the scheduled renewals of short lifetimes).
func logRenewals(t *testing.T, nodes ...*Node) {
	t.Helper()
	for _, n := range nodes {
		log := n.Agent.Tail(4 << 20)
		t.Logf("%s renewed %d client and %d serving certificates", n.Name,
			strings.Count(log, `credential=client how=renew`), strings.Count(log, `credential=serving how=renew`))
	}
}

// logsAround returns the log lines of every process stamped within d of
// at, each prefixed with its process name.
func (c *Cluster) logsAround(at time.Time, d time.Duration) string {
	var b strings.Builder
	seen := map[string]bool{}
	for _, p := range c.procs {
		if seen[p.Log] {
			continue
		}
		seen[p.Log] = true
		raw, err := os.ReadFile(p.Log)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(raw), "\n") {
			v, ok := strings.CutPrefix(line, "time=")
			if !ok {
				continue
			}
			v, _, _ = strings.Cut(v, " ")
			ts, err := time.Parse(time.RFC3339Nano, v)
			if err == nil && ts.After(at.Add(-d)) && ts.Before(at.Add(d)) {
				fmt.Fprintf(&b, "%s: %s\n", p.Name, line)
			}
		}
	}
	return b.String()
}
