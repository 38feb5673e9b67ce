package metadata

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodetrust/nodetrust/internal/clock"
)

// Config configures a Server. The zero value works.
type Config struct {
	// Logger receives structured logs; never a metadata value. Nil discards.
	Logger *slog.Logger
	// Clock drives long-poll timeouts. Nil means the real clock.
	Clock clock.Clock
	// Metrics are the Prometheus metrics; nil means unregistered ones.
	Metrics *Metrics
	// AllowedHosts are Host header names accepted besides
	// metadata.google.internal, metadata, 169.254.169.254 and the address a
	// connection arrived at (for example the name in GCE_METADATA_HOST).
	AllowedHosts []string
	// MaxWatchersPerCaller caps the wait_for_change requests one source
	// address may have waiting (default 256); more get 429.
	MaxWatchersPerCaller int
	// MaxWatchers caps all waiting wait_for_change requests (default 20000).
	MaxWatchers int
	// SweepInterval is how often timed-out long-polls are answered (default
	// 250ms); abandoned ones are found every fourth sweep.
	SweepInterval time.Duration
	// Classify, when set, decides each caller's instance and view instead
	// of the data's hostAddresses and podRanges, which are then not
	// consulted. It runs once per request, from the connection (never trust
	// the request's headers); instance "" means the data's only instance
	// (ViewNone when it has several). Nil means by source address.
	Classify func(r *http.Request) (instance string, v View)
}

// Server is the metadata server. It is an http.Handler; Run serves it.
type Server struct {
	log          *slog.Logger
	clock        clock.Clock
	metrics      *Metrics
	allowedHosts map[string]bool
	maxPerCaller int
	maxWatchers  int
	sweepEvery   time.Duration
	classify     func(*http.Request) (string, View)

	mu   sync.Mutex // serialises SetData
	snap atomic.Pointer[snapshot]
	hub  *hub
}

// NewServer returns a server for d. A nil d is data not known yet: every
// metadata request is answered 503 until SetData.
func NewServer(cfg Config, d *Data) (*Server, error) {
	s := &Server{
		log:          cfg.Logger,
		clock:        clock.Or(cfg.Clock),
		metrics:      cfg.Metrics,
		allowedHosts: map[string]bool{"metadata.google.internal": true, "metadata": true, "169.254.169.254": true},
		maxPerCaller: cfg.MaxWatchersPerCaller,
		maxWatchers:  cfg.MaxWatchers,
		sweepEvery:   cfg.SweepInterval,
		classify:     cfg.Classify,
		hub:          newHub(),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.metrics == nil {
		s.metrics = NewMetrics(nil)
	}
	if s.maxPerCaller <= 0 {
		s.maxPerCaller = 256
	}
	if s.maxWatchers <= 0 {
		s.maxWatchers = 20000
	}
	if s.sweepEvery <= 0 {
		s.sweepEvery = 250 * time.Millisecond
	}
	for _, h := range cfg.AllowedHosts {
		if hh, _, err := net.SplitHostPort(h); err == nil {
			h = hh
		}
		s.allowedHosts[strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")] = true
	}
	snap, err := newSnapshot(d, 1)
	if err != nil {
		return nil, err
	}
	s.snap.Store(snap)
	s.metrics.generation.Set(1)
	return s, nil
}

// SetData validates d and serves it from now on. Waiting long-polls whose
// answer changed in their own view are answered; the others keep waiting, so
// a pod cannot tell that something concealed from it changed.
func (s *Server) SetData(d *Data) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.snap.Load()
	snap, err := newSnapshot(d, old.generated+1)
	if err != nil {
		return err
	}
	s.snap.Store(snap)
	close(old.changed)
	s.metrics.generation.Set(float64(snap.generated))
	s.notify(snap)
	return nil
}

// Data returns the data being served; nil before the first data.
func (s *Server) Data() *Data { return s.snap.Load().data }

// Run serves metadata on ln until ctx is done, then shuts down: waiting
// long-polls get their current value, and Run returns after every
// goroutine it started has ended.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	var wg sync.WaitGroup
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	wg.Go(func() { s.runSweeper(sweepCtx) })
	errc := make(chan error, 1)
	wg.Go(func() { errc <- srv.Serve(ln) })
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.closeAll()
	if serr := srv.Shutdown(shutCtx); serr != nil && err == nil {
		err = fmt.Errorf("shut down metadata server: %w", serr)
	}
	stopSweep()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (s *Server) runSweeper(ctx context.Context) {
	t := s.clock.NewTicker(s.sweepEvery)
	defer t.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C():
			s.sweep(now, i%4 == 0)
		}
	}
}
