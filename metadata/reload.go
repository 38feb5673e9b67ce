package metadata

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/nodetrust/nodetrust/internal/clock"
)

// Reloader keeps a Server serving the latest good content of a data file. It
// reloads when the file changes (polled, so editors that replace the file by
// renaming are seen too) and whenever Trigger receives (wire it to SIGHUP).
// A bad file is logged with what is wrong and the last good data keeps
// serving.
type Reloader struct {
	Path    string
	Server  *Server
	Logger  *slog.Logger
	Clock   clock.Clock
	Trigger <-chan struct{}
	// Interval between checks of the file (default 1s).
	Interval time.Duration
	// Loaded is the file content Server was created from, if known. Run
	// starts by comparing the file with it, so an edit made between loading
	// and Run is not missed; nil means Run reloads once at start.
	Loaded []byte

	last []byte
	stat fileStamp
}

type fileStamp struct {
	size  int64
	mtime time.Time
	ino   uint64
}

// Run watches the file until ctx is done.
func (r *Reloader) Run(ctx context.Context) error {
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	every := r.Interval
	if every <= 0 {
		every = time.Second
	}
	r.stat, _ = stampOf(r.Path)
	r.last = r.Loaded
	r.Reload(log, "start")
	t := clock.Or(r.Clock).NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.Trigger:
			r.Reload(log, "signal")
		case <-t.C():
			st, err := stampOf(r.Path)
			if err != nil {
				if st != r.stat {
					log.Error("metadata data file unreadable; still serving the last good data", "file", r.Path, "err", err)
					r.Server.metrics.reloads.WithLabelValues("error").Inc()
				}
				r.stat = st
				continue
			}
			if st != r.stat {
				r.stat = st
				r.Reload(log, "file changed")
			}
		}
	}
}

// Reload loads the file now, logging to log (nil: r.Logger). It reports
// whether new data is being served.
func (r *Reloader) Reload(log *slog.Logger, why string) bool {
	if log == nil {
		log = r.Logger
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b, err := os.ReadFile(r.Path)
	if err == nil && r.last != nil && bytes.Equal(b, r.last) {
		r.Server.metrics.reloads.WithLabelValues("unchanged").Inc()
		return false
	}
	var d *Data
	if err == nil {
		d, err = Parse(b)
	}
	if err == nil {
		err = r.Server.SetData(d)
	}
	if err != nil {
		log.Error("metadata data file rejected; still serving the last good data", "file", r.Path, "trigger", why, "err", err)
		r.Server.metrics.reloads.WithLabelValues("error").Inc()
		return false
	}
	r.last = b
	log.Info("metadata data reloaded", "file", r.Path, "trigger", why, "instances", len(d.Instances))
	r.Server.metrics.reloads.WithLabelValues("ok").Inc()
	return true
}
