package systemd_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/systemd"
)

// recorder is a Notifier that keeps every message.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Notify(s string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, s)
	return nil
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

func (r *recorder) count(prefix string) int {
	n := 0
	for _, m := range r.all() {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

func (r *recorder) has(msg string) bool {
	for _, m := range r.all() {
		if m == msg {
			return true
		}
	}
	return false
}

func TestDaemonMessages(t *testing.T) {
	rec := &recorder{}
	d := &systemd.Daemon{Notifier: rec, Monotonic: func() string { return "MONOTONIC_USEC=12345\n" }}
	d.Status("starting")
	d.Status("starting") // unchanged: not sent again
	d.Ready("ready: all\ngood")
	d.Reloading()
	d.Ready("ready")
	d.Ping()
	d.Stopping()
	assert.Equal(t, []string{
		"STATUS=starting",
		"READY=1\nSTATUS=ready: all good",
		"RELOADING=1\nMONOTONIC_USEC=12345\nSTATUS=reloading configuration",
		"READY=1\nSTATUS=ready",
		"WATCHDOG=1",
		"STOPPING=1\nSTATUS=stopping",
	}, rec.all())
}

func TestDaemonWithoutNotifySocketIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	d := systemd.FromEnv(nil)
	assert.False(t, d.Enabled())
	d.Ready("x")
	d.Ping()
	var nilD *systemd.Daemon
	nilD.Ready("x")
	nilD.Stopping()
	assert.False(t, nilD.Enabled())
}

// TestRealNotifySocket checks the real path: daemon.SdNotify over a
// unixgram socket named by NOTIFY_SOCKET, and WATCHDOG_USEC.
func TestRealNotifySocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", "")
	d := systemd.FromEnv(nil)
	require.True(t, d.Enabled())
	assert.Equal(t, 30*time.Second, d.Watchdog)
	d.Reloading()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	require.NoError(t, err)
	msg := string(buf[:n])
	assert.True(t, strings.HasPrefix(msg, "RELOADING=1\nMONOTONIC_USEC="), msg)
	assert.True(t, strings.HasSuffix(msg, "\nSTATUS=reloading configuration"), msg)
}

// fakeAgent is an AgentSource whose Lifecycle the test sets.
type fakeAgent struct {
	mu sync.Mutex
	l  agent.Lifecycle
}

func (f *fakeAgent) Lifecycle() agent.Lifecycle {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.l
}

func (f *fakeAgent) set(l agent.Lifecycle) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.l = l
}

func TestSupervisor(t *testing.T) {
	clk := clock.NewFake(t0)
	rec := &recorder{}
	d := &systemd.Daemon{Notifier: rec, Watchdog: 20 * time.Second, Monotonic: func() string { return "MONOTONIC_USEC=1\n" }}
	src := &fakeAgent{}
	boot := agent.Lifecycle{Heartbeat: 5 * time.Second, LastBeat: t0, InRound: true, RoundStarted: t0, RoundLimit: 20 * time.Minute,
		Credentials: []agent.CredentialState{{Name: "client", Pending: true}}}
	src.set(boot)
	s := systemd.NewSupervisor(d, src, clk, nil)
	assert.Equal(t, 5*time.Second, s.Heartbeat())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	wait := func(msg string) {
		t.Helper()
		require.Eventually(t, func() bool { return rec.has(msg) }, 10*time.Second, 5*time.Millisecond, "no %q in %q", msg, rec.all())
	}

	wait("STATUS=bootstrapping: waiting for CSR approval")
	wait("WATCHDOG=1")
	assert.False(t, s.Ready())

	// Credentials arrive: READY=1 once, with the status.
	ready := agent.Lifecycle{Heartbeat: 5 * time.Second, LastBeat: t0, Credentials: []agent.CredentialState{valid("client")}}
	src.set(ready)
	s.Poke()
	wait("READY=1\nSTATUS=ready: client cert valid until 2026-11-29 02:00 UTC")
	assert.True(t, s.Ready())

	// Pings every 10s (half of 20s) while the loop beats.
	pings := rec.count("WATCHDOG=1")
	for i := 1; i <= 2; i++ {
		require.True(t, clk.WaitForWaiters(1, 10*time.Second))
		clk.Advance(5 * time.Second)
		ready.LastBeat = clk.Now()
		src.set(ready)
	}
	s.Poke()
	require.Eventually(t, func() bool { return rec.count("WATCHDOG=1") > pings }, 10*time.Second, 5*time.Millisecond)

	// The loop stops beating: no ping at all. Each step changes the
	// status, and a STATUS seen means that round's ping was decided.
	stale := func(n int) string {
		l := ready
		l.LastBeat = t0.Add(-time.Hour)
		l.Credentials = []agent.CredentialState{valid("client")}
		l.Credentials[0].NotAfter = t0.Add(time.Duration(n) * time.Hour)
		src.set(l)
		s.Poke()
		return "STATUS=ready: client cert valid until " + l.Credentials[0].NotAfter.UTC().Format("2006-01-02 15:04 UTC")
	}
	wait(stale(30))
	pings = rec.count("WATCHDOG=1")
	for range 4 {
		require.True(t, clk.WaitForWaiters(1, 10*time.Second))
		clk.Advance(5 * time.Second)
	}
	wait(stale(31))
	assert.Equal(t, pings, rec.count("WATCHDOG=1"), "no ping while the loop is wedged")
	ready.LastBeat = clk.Now()
	src.set(ready)
	s.Poke()
	require.Eventually(t, func() bool { return rec.count("WATCHDOG=1") > pings }, 10*time.Second, 5*time.Millisecond)

	// A rejected reload: RELOADING=1, then READY=1 naming the error.
	err := s.Reload(func() error { return errors.New("agent.yaml: line 3: field chekInterval not found") })
	require.Error(t, err)
	wait("RELOADING=1\nMONOTONIC_USEC=1\nSTATUS=reloading configuration")
	wait("READY=1\nSTATUS=ready: client cert valid until 2026-11-29 02:00 UTC (last reload failed, old configuration in use: agent.yaml: line 3: field chekInterval not found)")
	require.NoError(t, s.Reload(func() error { return nil }))
	msgs := rec.all()
	assert.Equal(t, "READY=1\nSTATUS=ready: client cert valid until 2026-11-29 02:00 UTC", msgs[len(msgs)-1])

	cancel()
	require.NoError(t, <-done)
	done <- nil
	assert.Equal(t, "STOPPING=1\nSTATUS=stopping", rec.all()[len(rec.all())-1])
}
