package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// This file is what a service manager (package systemd) needs from the
// agent: a snapshot of where it is (Lifecycle), a heartbeat from Run's
// loop for a watchdog, and Reload to apply a new configuration.

// Lifecycle is a snapshot of the agent for a service manager: enough to
// say in words what it is doing, whether it is ready and whether its main
// loop is alive. It holds no secret.
type Lifecycle struct {
	// Credentials, client first.
	Credentials []CredentialState
	// InRound is true while Run's loop is obtaining or checking
	// credentials; RoundStarted is when that round began and RoundLimit
	// how long a round may take before the loop counts as wedged (every
	// credential's CSR wait, csrTimeout, plus a margin for the network).
	InRound      bool
	RoundStarted time.Time
	RoundLimit   time.Duration
	// LastBeat is when Run's loop last ran; Heartbeat is how often it
	// wakes at least (0: no heartbeat was asked for).
	LastBeat  time.Time
	Heartbeat time.Duration
	// TunnelServers is how many tunnel servers are configured (0: no
	// tunnels); TunnelsUp how many tunnels or streams are connected now.
	TunnelServers int
	TunnelsUp     int
	// Reloads counts configurations applied by Reload.
	Reloads int
}

// CredentialState is one credential in a Lifecycle.
type CredentialState struct {
	Name string // "client" or "serving"
	// Valid is true while the credential holds a certificate that has not
	// expired.
	Valid    bool
	NotAfter time.Time
	// Settled is true when there is nothing to do until NextRotation.
	Settled      bool
	NextRotation time.Time
	// Pending is true while a request is in flight: a key waits for its
	// certificate (the CSR is filed or about to be).
	Pending   bool
	LastError string
	Failures  int
	RetryAt   time.Time
}

// ReloadResult says what Reload did with a new configuration.
type ReloadResult struct {
	// Applied lists the keys whose new values are in use now.
	Applied []string `json:"applied,omitempty"`
	// NeedRestart lists the changed keys that take effect only after a
	// restart of the agent; their old values stay in use.
	NeedRestart []string `json:"needRestart,omitempty"`
}

// liveKeys are the configuration keys Reload applies to a running agent.
// Every one of them is read only by Run's own goroutine, which is where
// Reload applies them, so nothing races with the change.
var liveKeys = []string{"checkInterval", "csrTimeout", "serving.ips", "serving.dnsNames", "serving.noAutoAddresses"}

// lifecycle is the agent's bookkeeping for Lifecycle, the heartbeat and
// Reload.
type lifecycle struct {
	mu         sync.Mutex
	inRound    bool
	started    time.Time
	lastBeat   time.Time
	cancel     context.CancelFunc // of the round in progress
	pending    bool               // a reload waits: cancel rounds at once
	every      time.Duration
	onBeat     func()
	konn       []interface{ Connected() int }
	reloads    int
	csrTimeout time.Duration

	requests chan reloadRequest
}

type reloadRequest struct {
	cfg  *Config
	done chan ReloadResult
}

// OnHeartbeat makes Run's loop wake at least every interval and call beat
// each time it runs (beat must not block). Call it before Run.
func (a *Agent) OnHeartbeat(every time.Duration, beat func()) {
	a.life.mu.Lock()
	defer a.life.mu.Unlock()
	a.life.every, a.life.onBeat = every, beat
}

// Lifecycle returns a snapshot of the agent now.
func (a *Agent) Lifecycle() Lifecycle {
	now := a.clock.Now()
	l := &a.life
	l.mu.Lock()
	s := Lifecycle{InRound: l.inRound, RoundStarted: l.started, LastBeat: l.lastBeat, Heartbeat: l.every, Reloads: l.reloads}
	csrTimeout := l.csrTimeout
	for _, k := range l.konn {
		s.TunnelsUp += k.Connected()
	}
	l.mu.Unlock()
	if csrTimeout == 0 {
		csrTimeout = time.Duration(a.cfg.CSRTimeout) // before Run: nothing changes it yet
	}
	s.RoundLimit = time.Duration(len(a.creds))*csrTimeout + roundMargin
	if a.tunnel != nil {
		s.TunnelsUp += a.tunnel.Connected()
	}
	if a.tunnel != nil || len(a.konn) > 0 {
		s.TunnelServers = len(a.cfg.Tunnel.Servers)
	}
	for _, c := range a.creds {
		c.mu.Lock()
		cs := CredentialState{Name: c.name, Failures: c.failures, RetryAt: c.retry}
		if c.pair != nil {
			cs.Valid = now.Before(c.pair.Cert.NotAfter)
			cs.NotAfter = c.pair.Cert.NotAfter
			cs.NextRotation = c.renewAt
		}
		if c.lastErr != nil {
			cs.LastError = c.lastErr.Error()
		}
		c.mu.Unlock()
		cs.Settled = c.settled(now)
		if s.InRound && !cs.Settled {
			_, err := os.Stat(filepath.Join(c.store.Dir, c.store.Prefix+"-pending.key"))
			cs.Pending = err == nil
		}
		s.Credentials = append(s.Credentials, cs)
	}
	return s
}

// roundMargin is added to the CSR waits of a round for metadata reads,
// dials and TLS handshakes, each bounded by its own timeout.
const roundMargin = 5 * time.Minute

// liveRound runs one round of Run's loop with the bookkeeping of
// Lifecycle; a Reload cancels it, so a long CSR wait does not hold up a
// reload (the pending key is kept: the next round re-attaches to that CSR).
func (a *Agent) liveRound(ctx context.Context) time.Time {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l := &a.life
	l.mu.Lock()
	l.inRound, l.started, l.cancel = true, a.clock.Now(), cancel
	l.csrTimeout = time.Duration(a.cfg.CSRTimeout)
	if l.pending {
		cancel()
	}
	l.mu.Unlock()
	a.beat()
	next := a.round(ctx)
	l.mu.Lock()
	l.inRound, l.cancel = false, nil
	l.mu.Unlock()
	a.beat()
	return next
}

// idle waits until next (at most CheckInterval), waking every heartbeat
// to beat. It returns false when ctx is done, and true when a round is
// due: at the end of the wait, or at once after a reload was applied.
func (a *Agent) idle(ctx context.Context, next time.Time) bool {
	deadline := minTime(next, a.clock.Now().Add(time.Duration(a.cfg.CheckInterval)))
	for {
		a.beat()
		wait := max(deadline.Sub(a.clock.Now()), 0)
		full := true
		if hb := a.heartbeat(); hb > 0 && hb < wait {
			wait, full = hb, false
		}
		t := a.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case req := <-a.life.requests:
			t.Stop()
			req.done <- a.applyReload(req.cfg)
			return true
		case <-t.C():
		}
		if full || !a.clock.Now().Before(deadline) {
			return true
		}
	}
}

func (a *Agent) heartbeat() time.Duration {
	a.life.mu.Lock()
	defer a.life.mu.Unlock()
	return a.life.every
}

// beat records that Run's loop ran and calls the heartbeat hook.
func (a *Agent) beat() {
	l := &a.life
	l.mu.Lock()
	l.lastBeat = a.clock.Now()
	f := l.onBeat
	l.mu.Unlock()
	if f != nil {
		f()
	}
}

// addTunnel counts c's connections in Lifecycle (konnectivity clients,
// made once the node name is known).
func (a *Agent) addTunnel(c interface{ Connected() int }) {
	a.life.mu.Lock()
	defer a.life.mu.Unlock()
	a.life.konn = append(a.life.konn, c)
}

// ErrNotRunning is returned by Reload when Run's loop did not take the
// new configuration before the context ended.
var ErrNotRunning = errors.New("agent main loop did not take the configuration")

// Reload hands cfg to Run's loop, which applies the keys that can change
// live (see ReloadResult), keeps the old values of the others and
// re-checks every credential at once. A round in progress (such as a wait
// for CSR approval) is interrupted so the reload is prompt. cfg must have
// passed LoadConfig or ParseConfig.
func (a *Agent) Reload(ctx context.Context, cfg *Config) (ReloadResult, error) {
	l := &a.life
	l.mu.Lock()
	l.pending = true
	if l.cancel != nil {
		l.cancel()
	}
	l.mu.Unlock()
	req := reloadRequest{cfg: cfg, done: make(chan ReloadResult, 1)}
	select {
	case l.requests <- req:
	case <-ctx.Done():
		l.mu.Lock()
		l.pending = false
		l.mu.Unlock()
		return ReloadResult{}, fmt.Errorf("%w: %w", ErrNotRunning, ctx.Err())
	}
	return <-req.done, nil
}

// applyReload runs in Run's goroutine.
func (a *Agent) applyReload(cfg *Config) ReloadResult {
	changed := ConfigChanges(a.cfg, cfg)
	var r ReloadResult
	for _, k := range changed {
		if slices.Contains(liveKeys, k) {
			r.Applied = append(r.Applied, k)
		} else {
			r.NeedRestart = append(r.NeedRestart, k)
		}
	}
	a.cfg.CheckInterval = cfg.CheckInterval
	a.cfg.CSRTimeout = cfg.CSRTimeout
	a.cfg.Serving.IPs = cfg.Serving.IPs
	a.cfg.Serving.DNSNames = cfg.Serving.DNSNames
	a.cfg.Serving.NoAutoAddresses = cfg.Serving.NoAutoAddresses
	for _, c := range a.creds {
		c.mu.Lock()
		c.retry = time.Time{} // re-check at once, even one in backoff
		c.mu.Unlock()
	}
	l := &a.life
	l.mu.Lock()
	l.pending = false
	l.reloads++
	l.mu.Unlock()
	if len(r.Applied) > 0 {
		a.log.Info("configuration reloaded", "applied", r.Applied)
	}
	if len(r.NeedRestart) > 0 {
		a.log.Warn("changed configuration keys take effect only after a restart; their old values stay in use", "keys", r.NeedRestart)
	}
	return r
}

// ConfigChanges lists the keys (dotted, as in the file) whose values
// differ between two configurations, sorted.
func ConfigChanges(old, new *Config) []string {
	flat := func(c *Config) map[string]string {
		m := map[string]string{}
		var node yaml.Node
		if err := node.Encode(c); err != nil {
			return m
		}
		flatten(&node, "", m)
		return m
	}
	o, n := flat(old), flat(new)
	var keys []string
	for k, v := range o {
		if n[k] != v {
			keys = append(keys, k)
		}
	}
	for k := range n {
		if _, ok := o[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// flatten records every mapping key under prefix; sequences and scalars
// are values.
func flatten(n *yaml.Node, prefix string, m map[string]string) {
	if n.Kind != yaml.MappingNode {
		b, _ := yaml.Marshal(n)
		m[prefix] = string(b)
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i].Value
		if prefix != "" {
			k = prefix + "." + k
		}
		flatten(n.Content[i+1], k, m)
	}
}
