package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/nodetrust/nodetrust/systemd"
)

// newLogger returns a logger at the named level: structured entries to
// the journal when w is a stderr that systemd connected to the journal
// (JOURNAL_STREAM), text lines otherwise. Both redact the values of
// attributes whose keys name secrets (systemd.SecretKey).
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: want debug, info, warn or error", errUsage, level)
	}
	if f, ok := w.(*os.File); ok && f == os.Stderr {
		if yes, _ := journal.StderrIsJournalStream(); yes && journal.Enabled() {
			return slog.New(systemd.NewJournalHandler(l, nil)), nil
		}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l, ReplaceAttr: systemd.RedactAttr})), nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
