package systemd

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// AgentSource is what the supervisor reads: *agent.Agent.
type AgentSource interface {
	Lifecycle() agent.Lifecycle
}

// Supervisor reports an agent to systemd: STATUS on every change, READY=1
// once AgentReady, WATCHDOG=1 at half the watchdog interval while
// AgentAlive, RELOADING=1 then READY=1 around Reload, STOPPING=1 at the
// end. Create it with NewSupervisor, hand Heartbeat and Poke to
// agent.OnHeartbeat, and Run it beside the agent.
type Supervisor struct {
	d     *Daemon
	src   AgentSource
	clock clock.Clock
	log   *slog.Logger

	wake      chan struct{}
	reloading atomic.Bool
	ready     atomic.Bool
	note      atomic.Pointer[string] // the last reload's failure, until one succeeds
}

// statusEvery is how often the status is re-read between heartbeats
// (tunnels come and go on their own); startPoll is how often until
// READY=1 was sent.
const (
	statusEvery = 5 * time.Second
	startPoll   = 200 * time.Millisecond
)

// NewSupervisor returns a supervisor of src for d.
func NewSupervisor(d *Daemon, src AgentSource, clk clock.Clock, log *slog.Logger) *Supervisor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Supervisor{d: d, src: src, clock: clock.Or(clk), log: log, wake: make(chan struct{}, 1)}
}

// Heartbeat is how often the agent's loop must wake for the watchdog: a
// quarter of WatchdogSec, so a loop two heartbeats late stops the pings
// with time to spare; 0 without a watchdog.
func (s *Supervisor) Heartbeat() time.Duration {
	if !s.d.Enabled() {
		return 0
	}
	return s.d.Watchdog / 4
}

// Poke makes Run look at the agent now; it never blocks.
func (s *Supervisor) Poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Ready reports whether READY=1 was sent.
func (s *Supervisor) Ready() bool { return s.ready.Load() }

// Run reports until ctx is done, then sends STOPPING=1. Without
// NOTIFY_SOCKET it only waits for ctx.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.d.Enabled() {
		<-ctx.Done()
		return nil
	}
	every := statusEvery
	if s.d.Watchdog > 0 {
		every = min(every, s.d.Watchdog/2)
	}
	t := s.clock.NewTimer(startPoll)
	defer t.Stop()
	var lastPing time.Time
	sick := false
	for {
		now := s.clock.Now()
		l := s.src.Lifecycle()
		// The ping decision comes first: a STATUS seen means that round's
		// ping was decided (tests rely on it).
		if s.d.Watchdog > 0 && now.Sub(lastPing) >= s.d.Watchdog/2-s.d.Watchdog/20 {
			ok, why := AgentAlive(l, now)
			if ok {
				s.d.Ping()
				lastPing = now
			} else if !sick {
				s.log.Error("main loop not alive; watchdog pings stop and systemd will restart the agent", "reason", why)
			}
			sick = !ok
		}
		if !s.reloading.Load() {
			st := s.status(l, now)
			if !s.ready.Load() && AgentReady(l) {
				s.ready.Store(true)
				s.d.Ready(st)
				s.log.Info("ready", "status", st)
			} else {
				s.d.Status(st)
			}
		}
		wait := every
		if !s.ready.Load() {
			wait = min(wait, startPoll) // tunnels come up on their own: READY=1 promptly
		}
		t.Stop()
		t.Reset(wait)
		select {
		case <-ctx.Done():
			s.d.Stopping()
			return nil
		case <-t.C():
		case <-s.wake:
		}
	}
}

// Reload sends RELOADING=1, runs fn, then READY=1 with the agent's status
// (when READY=1 was sent before; a reload during start-up only changes
// STATUS). When fn fails, STATUS names the error until a reload succeeds:
// the old configuration stays in use. It returns fn's error.
func (s *Supervisor) Reload(fn func() error) error {
	s.reloading.Store(true)
	defer s.reloading.Store(false)
	s.d.Reloading()
	err := fn()
	if err != nil {
		n := "last reload failed, old configuration in use: " + clip(err.Error(), 200)
		s.note.Store(&n)
	} else {
		s.note.Store(nil)
	}
	st := s.status(s.src.Lifecycle(), s.clock.Now())
	if s.ready.Load() {
		s.d.Ready(st)
	} else {
		s.d.Status(st)
	}
	return err
}

func (s *Supervisor) status(l agent.Lifecycle, now time.Time) string {
	st := AgentStatus(l, now)
	if n := s.note.Load(); n != nil {
		st += " (" + *n + ")"
	}
	return st
}
