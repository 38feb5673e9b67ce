package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/bench/benchkit"
	"github.com/nodetrust/nodetrust/test/harness"
)

// fleetResult is the many-agents measurement.
type fleetResult struct {
	n         int
	envStart  time.Duration // harness start with n nodes
	stateIn   string        // parent of the state folders
	tmpfs     bool          // stateIn is on a tmpfs
	quiet     float64       // CPUs other processes used just before
	ok        int           // Once returned nil and the credentials check out
	failed    int           // Once returned an error or the credentials are wrong
	firstErr  error
	attempts  int64    // failed attempts logged by the agents (retried)
	firstLogs []string // the first of those, for the report
	total     time.Duration
	per       []time.Duration
	maxFDs    int
	cpu       benchkit.CPUUse
	base      fleetBase
}

// fleetBase is n HTTPS requests released together, each on its own
// connection.
type fleetBase struct {
	failed   int
	firstErr error
	total    time.Duration
	per      []time.Duration
	cpu      benchkit.CPUUse
}

// benchFleet bootstraps o.agents agents at once, in this process, against
// one control plane: each has its own state folder and the metadata view
// of its own node (its own source address). The baseline, run first, is the
// same number of HTTPS requests released together.
func benchFleet(o options) (*fleetResult, error) {
	nodes := make([]string, o.agents)
	for i := range nodes {
		nodes[i] = fmt.Sprintf("node-%04d", i)
	}
	t := newBenchT()
	defer t.close()
	t0 := time.Now()
	env, err := startEnv(t, nodes)
	if err != nil {
		return nil, err
	}
	r := &fleetResult{n: o.agents, envStart: time.Since(t0), stateIn: o.fleetIn, tmpfs: benchkit.IsTmpfs(o.fleetIn)}
	// The baseline runs before and after the agents; the faster run (the
	// less disturbed by other work on the machine) is reported.
	benchkit.WaitQuiet(o.quiet)
	r.base = fleetBaseline(o.agents, env.APIURL+"/healthz", env.CAPEM)
	defer func() {
		benchkit.WaitQuiet(o.quiet)
		if b := fleetBaseline(o.agents, env.APIURL+"/healthz", env.CAPEM); b.total < r.base.total {
			r.base = b
		}
	}()

	counter := &failureLog{}
	log := slog.New(counter)
	agents := make([]*agent.Agent, o.agents)
	states := make([]string, o.agents)
	for i := range agents {
		states[i] = filepath.Join(o.fleetIn, fmt.Sprintf("%04d", i))
		cfg, err := agent.ParseConfig([]byte("server: " + env.APIURL + "\nstateDir: " + states[i] + "\nmetadata: {host: '" + env.MDAddr + "'}\n"))
		if err != nil {
			return nil, err
		}
		agents[i], err = agent.New(cfg, agent.Options{Logger: log, Clock: clock.Real{}, Metadata: env.MetadataClient(i)})
		if err != nil {
			return nil, err
		}
	}

	stopFDs := make(chan struct{})
	fds := make(chan int)
	go func() {
		m := 0
		for {
			m = max(m, benchkit.OpenFiles())
			select {
			case <-stopFDs:
				fds <- m
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	release := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, o.agents)
	r.per = make([]time.Duration, o.agents)
	var start time.Time
	for i, a := range agents {
		wg.Go(func() {
			<-release
			ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			defer cancel()
			errs[i] = a.Once(ctx)
			r.per[i] = time.Since(start)
		})
	}
	time.Sleep(100 * time.Millisecond) // let every goroutine park on release
	r.quiet = benchkit.WaitQuiet(o.quiet)
	stopProfile, err := startProfile(o.profile)
	if err != nil {
		return nil, err
	}
	c0 := benchkit.SampleCPU()
	start = time.Now()
	close(release)
	wg.Wait()
	r.total = time.Since(start)
	stopProfile()
	r.cpu = benchkit.CPUBetween(c0, benchkit.SampleCPU())
	close(stopFDs)
	r.maxFDs = <-fds

	for i, err := range errs {
		if err == nil {
			err = checkCredentials(states[i], nodes[i])
		}
		if err != nil {
			r.failed++
			if r.firstErr == nil {
				r.firstErr = fmt.Errorf("%s: %w", nodes[i], err)
			}
			continue
		}
		r.ok++
	}
	r.attempts = counter.n.Load()
	r.firstLogs = counter.first()
	return r, nil
}

func fleetBaseline(n int, url string, caPEM []byte) fleetBase {
	var b fleetBase
	release := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, n)
	b.per = make([]time.Duration, n)
	var start time.Time
	for i := range n {
		wg.Go(func() {
			<-release
			_, errs[i] = inprocBaseline(url, caPEM)
			b.per[i] = time.Since(start)
		})
	}
	time.Sleep(100 * time.Millisecond)
	c0 := benchkit.SampleCPU()
	start = time.Now()
	close(release)
	wg.Wait()
	b.total = time.Since(start)
	b.cpu = benchkit.CPUBetween(c0, benchkit.SampleCPU())
	for _, err := range errs {
		if err != nil {
			b.failed++
			if b.firstErr == nil {
				b.firstErr = err
			}
		}
	}
	return b
}

// failureLog is a slog handler that counts the agents' warnings and errors
// (each a failed attempt, retried with backoff) and keeps the first few.
type failureLog struct {
	n     atomic.Int64
	mu    sync.Mutex
	lines []string
}

func (h *failureLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *failureLog) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h *failureLog) WithGroup(string) slog.Handler                { return h }

func (h *failureLog) Handle(_ context.Context, r slog.Record) error {
	if h.n.Add(1) > 5 {
		return nil
	}
	s := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool {
		s += " " + a.String()
		return true
	})
	h.mu.Lock()
	h.lines = append(h.lines, s)
	h.mu.Unlock()
	return nil
}

func (h *failureLog) first() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.lines...)
}

func hostRange(i int) string { return harness.HostAddr(i) }

// startProfile starts a CPU profile into dir (nothing when dir is "") and
// writes goroutine profiles 1 s and 3 s later; the returned function stops
// it.
func startProfile(dir string) (func(), error) {
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, "fleet-cpu.pprof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		t0 := time.Now()
		for _, at := range []time.Duration{time.Second, 3 * time.Second} {
			select {
			case <-done:
				return
			case <-time.After(time.Until(t0.Add(at))):
			}
			g, err := os.Create(filepath.Join(dir, fmt.Sprintf("fleet-goroutines-%v.txt", at)))
			if err == nil {
				pprof.Lookup("goroutine").WriteTo(g, 1)
				g.Close()
			}
		}
	}()
	return func() {
		close(done)
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
