package systemd

import (
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends one sd_notify(3) message ("READY=1\nSTATUS=...").
type Notifier interface {
	Notify(state string) error
}

// SocketNotifier sends to $NOTIFY_SOCKET with go-systemd's daemon.SdNotify.
type SocketNotifier struct{}

// Notify sends state; it does nothing when NOTIFY_SOCKET is unset.
func (SocketNotifier) Notify(state string) error {
	_, err := daemon.SdNotify(false, state)
	return err
}

// Daemon speaks the notify protocol for one service. The zero value and a
// nil *Daemon do nothing, so callers need no "under systemd?" checks.
type Daemon struct {
	// Notifier receives the messages; nil: nothing is sent.
	Notifier Notifier
	// Watchdog is WatchdogSec (from WATCHDOG_USEC); 0: no watchdog.
	Watchdog time.Duration
	// Monotonic returns the MONOTONIC_USEC=... line sent with RELOADING=1
	// (default daemon.SdNotifyMonotonicUsec, CLOCK_MONOTONIC).
	Monotonic func() string
	Logger    *slog.Logger

	mu     sync.Mutex
	status string
	failed bool
}

// FromEnv returns the Daemon for this process: the real notifier when
// NOTIFY_SOCKET is set, with the watchdog interval from WATCHDOG_USEC
// (checked against WATCHDOG_PID); otherwise a Daemon that does nothing.
func FromEnv(log *slog.Logger) *Daemon {
	d := &Daemon{Logger: log}
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return d
	}
	d.Notifier = SocketNotifier{}
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		d.log().Warn("ignoring the watchdog settings from systemd", "err", err)
	}
	d.Watchdog = wd
	return d
}

// Enabled reports whether messages are sent.
func (d *Daemon) Enabled() bool { return d != nil && d.Notifier != nil }

func (d *Daemon) log() *slog.Logger {
	if d == nil || d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}

// send sends the lines of one message; a failure is logged once (systemd
// gone is not a reason to stop serving).
func (d *Daemon) send(lines ...string) {
	if !d.Enabled() {
		return
	}
	msg := strings.Join(lines, "\n")
	err := d.Notifier.Notify(msg)
	d.mu.Lock()
	first := err != nil && !d.failed
	d.failed = d.failed || err != nil
	d.mu.Unlock()
	if first {
		d.log().Warn("could not notify systemd (NOTIFY_SOCKET); the unit's state may be stale", "err", err)
	}
}

// statusLine is STATUS=<one line>: newlines would end the field.
func statusLine(s string) string {
	return "STATUS=" + strings.Join(strings.Fields(s), " ")
}

// Ready sends READY=1 with a status line.
func (d *Daemon) Ready(status string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	d.status = status
	d.mu.Unlock()
	d.send(daemon.SdNotifyReady, statusLine(status))
}

// Status sends STATUS= when it differs from the last one sent.
func (d *Daemon) Status(status string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	same := d.status == status
	d.status = status
	d.mu.Unlock()
	if !same {
		d.send(statusLine(status))
	}
}

// Reloading sends RELOADING=1 with MONOTONIC_USEC (needed by
// Type=notify-reload on systemd 253+, ignored by older ones); send Ready
// when the reload is done.
func (d *Daemon) Reloading() {
	if d == nil {
		return
	}
	mono := daemon.SdNotifyMonotonicUsec
	if d.Monotonic != nil {
		mono = d.Monotonic
	}
	d.mu.Lock()
	d.status = "reloading configuration"
	d.mu.Unlock()
	d.send(daemon.SdNotifyReloading, strings.TrimSuffix(mono(), "\n"), statusLine("reloading configuration"))
}

// Stopping sends STOPPING=1.
func (d *Daemon) Stopping() {
	d.send(daemon.SdNotifyStopping, statusLine("stopping"))
}

// Ping sends WATCHDOG=1.
func (d *Daemon) Ping() { d.send(daemon.SdNotifyWatchdog) }
