package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// timeline prints demo events with the time since the start and who acted.
type timeline struct {
	w     io.Writer
	start time.Time
	mu    sync.Mutex
	seen  map[[2]string]int // (who, log message) -> how often
}

func newTimeline(w io.Writer) *timeline {
	return &timeline{w: w, start: time.Now(), seen: map[[2]string]int{}}
}

func (t *timeline) say(who, format string, a ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, "[%6.2fs] %-13s %s\n", time.Since(t.start).Seconds(), who, fmt.Sprintf(format, a...))
}

// count says how often who has logged msg.
func (t *timeline) count(who, msg string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seen[[2]string{who, msg}]
}

func (t *timeline) saw(who, msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seen[[2]string{who, msg}]++
}

// raw prints lines without a timestamp (tables, status).
func (t *timeline) raw(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	io.WriteString(t.w, s)
}

// lineFor turns the log records worth showing into timeline lines; the
// rest stays out of the way. Warnings and errors are always shown.
var lineFor = map[string]func(a map[string]string) string{
	"bootstrap credential found": func(a map[string]string) string {
		return "read its bootstrap secret from the metadata host view: " + a["credential"]
	},
	"created certificate signing request": func(a map[string]string) string {
		return "created CSR " + a["csr"] + " (" + a["signer"] + ")"
	},
	"certificate issued": func(a map[string]string) string { return "CSR " + a["csr"] + " issued" },
	"certificate obtained": func(a map[string]string) string {
		return fmt.Sprintf("%s certificate written (%s): %s, valid until %s, next rotation at %s",
			a["credential"], a["how"], a["subject"], clockOf(a["not_after"]), clockOf(a["next_rotation"]))
	},
	"tunnel connected": func(a map[string]string) string { return "tunnel to the control plane up (mutual TLS)" },
	"client certificate changed; new tunnel up, draining the old one": func(map[string]string) string {
		return "new client certificate: new tunnel up, the old one drains (open streams keep flowing)"
	},
	"approved and issued": func(a map[string]string) string {
		return "approver approved " + a["csr"] + " (" + a["reason"] + "); signer process signed it"
	},
	"trust bundle updated": func(a map[string]string) string {
		return fmt.Sprintf("read the cluster trust bundle: %s CA(s), phase %s, active CA %s", a["roots"], a["phase"], shortPin(a["active_ca"]))
	},
	"certificate not issued by the active cluster CA; re-issuing it now": func(a map[string]string) string {
		return a["credential"] + " certificate is not from the active CA: re-issuing it now"
	},
	"agent tunnel connected": func(a map[string]string) string {
		if a["replaces"] != "" && a["replaces"] != "0" {
			return "tunnel from " + a["node"] + " accepted (replaces the previous one)"
		}
		return "tunnel from " + a["node"] + " accepted"
	},
}

// shortPin shortens "sha256:<64 hex>" for the timeline.
func shortPin(p string) string {
	if len(p) > 19 {
		return p[:19] + "…"
	}
	return p
}

// clockOf shortens a logged UTC time to hh:mm:ss.
func clockOf(s string) string {
	if t, err := time.Parse("2006-01-02 15:04:05 -0700 UTC", s); err == nil {
		return t.Local().Format("15:04:05")
	}
	return s
}

// timelineHandler is a slog.Handler that prints selected records of one
// component on the timeline.
type timelineHandler struct {
	tl    *timeline
	who   string
	attrs []slog.Attr
}

func (h *timelineHandler) Enabled(_ context.Context, l slog.Level) bool { return true }

func (h *timelineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *timelineHandler) WithGroup(string) slog.Handler { return h }

func (h *timelineHandler) Handle(_ context.Context, r slog.Record) error {
	a := map[string]string{}
	for _, at := range h.attrs {
		a[at.Key] = at.Value.String()
	}
	r.Attrs(func(at slog.Attr) bool {
		a[at.Key] = at.Value.String()
		return true
	})
	h.tl.saw(h.who, r.Message)
	if f, ok := lineFor[r.Message]; ok {
		h.tl.say(h.who, "%s", f(a))
		return nil
	}
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		for k, v := range a {
			fmt.Fprintf(&b, " %s=%q", k, v)
		}
		h.tl.say(h.who, "%s: %s%s", strings.ToLower(r.Level.String()), r.Message, b.String())
	}
	return nil
}
