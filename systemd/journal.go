package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
)

// SendFunc sends one journal entry (journal.Send's signature).
type SendFunc func(message string, priority journal.Priority, fields map[string]string) error

// JournalHandler is a slog.Handler that sends each record to journald
// with structured fields: MESSAGE (the message followed by key=value
// pairs, as the text handler writes them, so plain journalctl shows
// everything), PRIORITY, SYSLOG_IDENTIFIER=nodetrust, and every attribute
// as its own field named by FieldName ("credential" -> CREDENTIAL,
// group "tunnel" + "server" -> TUNNEL_SERVER). Values of attributes whose
// keys name secrets are redacted (SecretKey).
type JournalHandler struct {
	level  slog.Leveler
	send   SendFunc
	prefix string      // group prefix, "TUNNEL_"
	attrs  []slog.Attr // from WithAttrs, keys already prefixed with groups
}

// NewJournalHandler returns a handler sending records at level and above
// with send (nil: journal.Send).
func NewJournalHandler(level slog.Leveler, send SendFunc) *JournalHandler {
	if send == nil {
		send = journal.Send
	}
	if level == nil {
		level = slog.LevelInfo
	}
	return &JournalHandler{level: level, send: send}
}

// Enabled reports whether level is logged.
func (h *JournalHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.level.Level()
}

// Handle sends r.
func (h *JournalHandler) Handle(_ context.Context, r slog.Record) error {
	fields := map[string]string{"SYSLOG_IDENTIFIER": "nodetrust"}
	var msg strings.Builder
	msg.WriteString(r.Message)
	add := func(key string, v slog.Value) {
		s := v.String()
		if SecretKey(key) {
			s = Redacted
		}
		fields[FieldName(key)] = s
		if strings.ContainsAny(s, " \"=\n") {
			s = strconv.Quote(s)
		}
		fmt.Fprintf(&msg, " %s=%s", key, s)
	}
	for _, a := range h.attrs {
		add(a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		walk(h.prefix, a, add)
		return true
	})
	return h.send(msg.String(), priority(r.Level), fields)
}

// walk calls add for a and, for groups, each member, keys joined by ".".
func walk(prefix string, a slog.Attr, add func(string, slog.Value)) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, m := range v.Group() {
			walk(p, m, add)
		}
		return
	}
	if a.Key == "" {
		return
	}
	add(prefix+a.Key, v)
}

// WithAttrs returns a handler that adds attrs to every record.
func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	h2 := *h
	h2.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range attrs {
		walk(h.prefix, a, func(k string, v slog.Value) { h2.attrs = append(h2.attrs, slog.Attr{Key: k, Value: v}) })
	}
	return &h2
}

// WithGroup returns a handler that puts later attributes in group name.
func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + name + "."
	return &h2
}

// priority maps slog levels to syslog priorities.
func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	}
	return journal.PriDebug
}

// reservedFields are journal fields with a meaning of their own that an
// attribute must not overwrite.
var reservedFields = map[string]bool{"MESSAGE": true, "MESSAGE_ID": true, "PRIORITY": true, "CODE_FILE": true, "CODE_LINE": true,
	"CODE_FUNC": true, "ERRNO": true, "INVOCATION_ID": true, "USER_INVOCATION_ID": true, "SYSLOG_FACILITY": true,
	"SYSLOG_IDENTIFIER": true, "SYSLOG_PID": true, "SYSLOG_TIMESTAMP": true, "SYSLOG_RAW": true, "DOCUMENTATION": true, "TID": true}

// FieldName turns an attribute key into a journal field name by
// journald's rules: upper-case letters, digits and "_", not starting with
// "_" or a digit. Keys that would clash with a field journald gives a
// meaning to (MESSAGE, PRIORITY, ...) or start badly get a NODETRUST_
// prefix.
func FieldName(key string) string {
	var b strings.Builder
	prevLower := false
	for _, r := range key {
		switch {
		case r >= 'a' && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
			prevLower = true
			continue
		case r >= 'A' && r <= 'Z':
			if prevLower {
				b.WriteByte('_') // camelCase -> CAMEL_CASE
			}
			b.WriteRune(r)
		case r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
		prevLower = false
	}
	s := strings.TrimLeft(b.String(), "_")
	if s == "" || s[0] >= '0' && s[0] <= '9' || reservedFields[s] {
		s = "NODETRUST_" + s
	}
	if len(s) > 64 { // journald's limit on field names
		s = s[:64]
	}
	return s
}
