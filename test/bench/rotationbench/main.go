// Command rotationbench measures a cluster-CA rotation of a fleet: a
// control plane with its signer (test/harness, in-process, real clock) and
// -nodes real agents (agent.New + Run in this process, each with its own
// state folder and its own node's metadata view, going through the whole
// CSR and signing path). It reports, from `rotate start`:
//
//   - until every agent has read the new trust bundle;
//   - until every agent holds a client certificate of the new CA;
//   - until the control plane moved to update-servers by itself;
//   - from `rotate complete` until every agent trusts only the new CA;
//
// with the bundle poll interval used (trust.checkInterval, jittered to
// 80-120%). The baseline, measured in the same run, is the time for the
// same agents to bootstrap together from nothing (metadata, key, CSR,
// approval, signing, files): one certificate per node through the same
// API and signer, without a rotation.
//
// Run it from the module root:
//
//	go run ./test/bench/rotationbench            # 100 nodes, 5 s poll
//	go run ./test/bench/rotationbench -nodes 20 -poll 1s
//
// Exit status 0 when every node moved and no request failed, 1 otherwise.
package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/harness"
)

func main() {
	nodes := flag.Int("nodes", 100, "simulated nodes (agents in this process)")
	poll := flag.Duration("poll", 5*time.Second, "agents' trust.checkInterval (bundle poll interval, jittered 80-120%)")
	check := flag.Duration("check", 200*time.Millisecond, "control plane's RotationCheck (how often update-clients looks whether every node moved)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long per step")
	flag.Parse()
	code, err := run(*nodes, *poll, *check, *timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rotationbench:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

// benchT satisfies harness.T outside of a test.
type benchT struct {
	mu       sync.Mutex
	cleanups []func()
}

type fatal struct{ msg string }

func (t *benchT) Helper()                           {}
func (t *benchT) Fatal(args ...any)                 { panic(fatal{fmt.Sprint(args...)}) }
func (t *benchT) Fatalf(format string, args ...any) { panic(fatal{fmt.Sprintf(format, args...)}) }
func (t *benchT) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

func (t *benchT) close() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// errorCount counts log records at level Error (failed attempts).
type errorCount struct{ n atomic.Int64 }

func (h *errorCount) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }
func (h *errorCount) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h *errorCount) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *errorCount) WithGroup(string) slog.Handler      { return h }

func run(n int, poll, check, timeout time.Duration) (code int, err error) {
	t := &benchT{}
	defer t.close()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("harness: %s", f.msg)
		}
	}()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%03d", i)
	}
	env := harness.Start(t, harness.Options{Nodes: names, Clock: clock.Real{}, RotationCheck: check})
	dir, err := os.MkdirTemp("", "rotationbench")
	if err != nil {
		return 2, err
	}
	defer os.RemoveAll(dir)

	errs := &errorCount{}
	log := slog.New(errs)
	agents := make([]*agent.Agent, n)
	for i := range agents {
		cfg, err := agent.ParseConfig(fmt.Appendf(nil, "server: %s\nstateDir: %s\ntrust: {checkInterval: %s}\n",
			env.APIURL, filepath.Join(dir, names[i]), poll))
		if err != nil {
			return 2, err
		}
		if agents[i], err = agent.New(cfg, agent.Options{Logger: log, Clock: clock.Real{}, Metadata: env.MetadataClient(i)}); err != nil {
			return 2, err
		}
	}
	fmt.Printf("rotationbench: %d agents, bundle poll every %v (jittered 80-120%%), control plane RotationCheck %v\n", n, poll, check)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	t0 := time.Now()
	for _, a := range agents {
		wg.Go(func() { a.Run(ctx) })
	}
	// Baseline: every agent bootstraps (one CSR each, signed by the signer).
	st, err := env.RotationStatus()
	if err != nil {
		return 2, err
	}
	oldCA, err := caByPin(env, st.Active)
	if err != nil {
		return 2, err
	}
	if err := waitAll(timeout, agents, func(a *agent.Agent) bool { return issuedBy(a, oldCA) }); err != nil {
		return 1, fmt.Errorf("bootstrap: %w", err)
	}
	baseline := time.Since(t0)
	fmt.Printf("baseline: %d agents bootstrapped together in %v (%.1f certificates/s)\n", n, baseline.Round(time.Millisecond), float64(n)/baseline.Seconds())
	// Every agent has polled the bundle once: the fleet is in its steady state.
	if err := waitAll(timeout, agents, func(a *agent.Agent) bool { return a.TrustBundle() != nil }); err != nil {
		return 1, err
	}
	errsBefore := errs.n.Load()

	start := time.Now()
	st, err = env.Rotate("start")
	if err != nil {
		return 2, err
	}
	newPin := st.Active
	newCA, err := caByPin(env, newPin)
	if err != nil {
		return 2, err
	}
	// When each agent first held the new bundle and a new-CA certificate.
	seen, moved := make([]time.Duration, n), make([]time.Duration, n)
	err = waitFor(timeout, func() bool {
		now := time.Since(start)
		all := true
		for i, a := range agents {
			if seen[i] == 0 {
				if b := a.TrustBundle(); b != nil && b.ActivePin == newPin {
					seen[i] = now
				}
			}
			if moved[i] == 0 && issuedBy(a, newCA) {
				moved[i] = now
			}
			all = all && seen[i] != 0 && moved[i] != 0
		}
		return all
	})
	if err != nil {
		return 1, fmt.Errorf("rotation: %w", err)
	}
	reissue := make([]time.Duration, n)
	for i := range reissue {
		reissue[i] = max(moved[i]-seen[i], 0)
	}
	tBundle, tClients := slices.Max(seen), slices.Max(moved)
	if err := waitFor(timeout, func() bool { s, err := env.RotationStatus(); return err == nil && s.Phase == "update-servers" }); err != nil {
		return 1, fmt.Errorf("update-servers: %w", err)
	}
	tServers := time.Since(start)
	c0 := time.Now()
	st, err = env.Rotate("complete")
	if err != nil {
		return 2, err
	}
	if err := waitAll(timeout, agents, func(a *agent.Agent) bool {
		b := a.TrustBundle()
		return b != nil && b.Generation >= st.Generation && len(b.Roots) == 1 && issuedBy(a, newCA)
	}); err != nil {
		return 1, fmt.Errorf("complete: %w", err)
	}
	tComplete := time.Since(c0)
	failed := errs.n.Load() - errsBefore

	fmt.Printf("rotate start -> every agent read the new bundle:           %v (median %v; bound 1.2 x poll = %v)\n",
		tBundle.Round(time.Millisecond), median(seen).Round(time.Millisecond), (poll * 6 / 5).Round(time.Millisecond))
	fmt.Printf("rotate start -> every agent holds a new-CA client cert:    %v (median %v)\n",
		tClients.Round(time.Millisecond), median(moved).Round(time.Millisecond))
	fmt.Printf("bundle read -> new-CA client cert held, per agent:        median %v, max %v (%.2f x the baseline of the whole fleet's bootstrap)\n",
		median(reissue).Round(time.Millisecond), slices.Max(reissue).Round(time.Millisecond), slices.Max(reissue).Seconds()/baseline.Seconds())
	fmt.Printf("rotate start -> control plane in update-servers by itself: %v\n", tServers.Round(time.Millisecond))
	fmt.Printf("rotate complete -> every agent trusts only the new CA:     %v\n", tComplete.Round(time.Millisecond))
	fmt.Printf("ratio: start -> all on the new CA / baseline = %.2f; / poll interval = %.2f\n",
		tClients.Seconds()/baseline.Seconds(), tClients.Seconds()/poll.Seconds())
	fmt.Printf("failed attempts (agent error logs) during the rotation: %d\n", failed)
	if failed > 0 {
		return 1, nil
	}
	return 0, nil
}

// issuedBy reports whether a's client certificate was issued by ca.
func issuedBy(a *agent.Agent, ca *x509.Certificate) bool {
	c, err := a.ClientCertificate()
	if err != nil || c == nil || len(c.Certificate) == 0 {
		return false
	}
	leaf := c.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return false
		}
	}
	return leaf.CheckSignatureFrom(ca) == nil
}

// caByPin finds the CA with pin in the control plane's pki/ca.crt.
func caByPin(env *harness.Env, pin string) (*x509.Certificate, error) {
	b, err := os.ReadFile(controlplane.Paths{DataDir: env.Dir}.CACert())
	if err != nil {
		return nil, err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("no CA with pin %s in the control plane's ca.crt", pin)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err == nil && bootstrap.SPKIPin(c) == pin {
			return c, nil
		}
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func waitAll(timeout time.Duration, agents []*agent.Agent, ok func(*agent.Agent) bool) error {
	left := 0
	err := waitFor(timeout, func() bool {
		left = 0
		for _, a := range agents {
			if !ok(a) {
				left++
			}
		}
		return left == 0
	})
	if err != nil {
		return fmt.Errorf("%w: %d of %d agents not there", err, left, len(agents))
	}
	return nil
}

func waitFor(timeout time.Duration, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
