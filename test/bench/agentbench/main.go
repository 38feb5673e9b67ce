// Command agentbench measures nodetrust's node agent against baselines
// measured in the same run, on loopback, with the server side (control
// plane and metadata server, from test/harness, on the real clock) running
// in the bench process:
//
//   - start to credentials: `nodetrust agent --once` run as a subprocess,
//     each time with a fresh state folder (so a full bootstrap: metadata,
//     key, CSR, approval, signing, files), timed from exec to exit 0 with
//     the client certificate on disk. The baseline is a minimal Go process
//     making one HTTPS request to the same API with the agent's TLS
//     settings. The same bootstrap is also timed in-process (agent.New +
//     Once) against one in-process HTTPS request, which takes process
//     start-up out and splits the agent's time into steps;
//   - idle: `nodetrust agent` left running for 10 s once it holds its
//     certificate: resident memory and CPU, against a minimal Go process
//     that only sleeps, over the same window;
//   - a fleet: 1,000 agents in the bench process, each with its own state
//     folder and its own node's metadata view, released together against
//     one control plane: failures (failed attempts included), total time,
//     per-agent time. The baseline is 1,000 HTTPS requests (each its own
//     connection and handshake) released together against the same API.
//     The agents' state folders are on /dev/shm when it is a tmpfs, standing
//     in for each node's own disk: on one shared disk, 1,000 agents' fsyncs
//     queue behind each other, which no real fleet does (-fleet-dir changes
//     it).
//
// Run it from the module root:
//
//	go run ./test/bench/agentbench -bin bin/nodetrust
//
// It builds -bin when it does not exist, and always builds the small
// baseline program (./baseline) into its temporary folder. The exit status is
// 0 when every target passes, 1 when one fails, 2 on an error. Every process
// it starts is stopped, and every temporary folder removed, on exit and on
// Ctrl-C. The results go to docs/performance.md by hand, with the command
// that produced them.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/bench/benchkit"
	"github.com/nodetrust/nodetrust/test/harness"
)

type options struct {
	bin     string
	runs    int
	idle    time.Duration
	agents  int
	timeout time.Duration
	only    string
	keep    bool
	quiet   time.Duration // wait at most this long for a quiet machine before each part
	profile string        // folder for profiles of the fleet run
	fleetIn string        // parent of the fleet's state folders

	dir      string // temporary folder of this run
	baseline string // the baseline program, built into dir
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/nodetrust", "nodetrust binary (built with go build when missing)")
	flag.IntVar(&o.runs, "runs", 20, "timed bootstraps of each kind (process, in-process) and of their baselines")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "how long the running agent is watched idle")
	flag.IntVar(&o.agents, "agents", 1000, "agents bootstrapping at once")
	flag.DurationVar(&o.timeout, "timeout", time.Minute, "how long one agent may try before it counts as failed")
	flag.StringVar(&o.only, "only", "", `run only "start", "idle" or "fleet"`)
	flag.DurationVar(&o.quiet, "quiet", 5*time.Second, "before each part, wait at most this long for other processes to use under 0.1 CPUs")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary folder (state folders, agent logs)")
	flag.StringVar(&o.fleetIn, "fleet-dir", "", "parent `DIR` of the fleet agents' state folders (default: /dev/shm when it is a tmpfs, else the temporary folder)")
	flag.StringVar(&o.profile, "profile", "", "write a CPU profile of the fleet run and goroutine profiles 1 s and 3 s into it to `DIR`")
	flag.Parse()
	if flag.NArg() != 0 || o.runs < 1 || o.idle <= 0 || o.agents < 1 || o.agents > 250*250*10 ||
		o.only != "" && o.only != "start" && o.only != "idle" && o.only != "fleet" {
		flag.Usage()
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "agentbench:", err)
		return 2
	}

	nofile := benchkit.RaiseNoFile()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "\nagentbench: %v: stopping processes and servers, removing temporary folders\n", s)
		cleanUp(5 * time.Second)
		os.Exit(130)
	}()
	defer cleanUp(time.Minute)

	if err := ensureBinary(&o); err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "agentbench-")
	if err != nil {
		return fail(err)
	}
	o.dir = dir
	if o.keep {
		fmt.Fprintln(os.Stderr, "agentbench: keeping", dir)
	} else {
		onCleanUp(func() { os.RemoveAll(dir) })
	}
	if o.fleetIn == "" && benchkit.IsTmpfs("/dev/shm") {
		o.fleetIn = "/dev/shm"
	}
	if o.fleetIn == "" {
		o.fleetIn = dir
	} else if o.only == "" || o.only == "fleet" {
		fd, err := os.MkdirTemp(o.fleetIn, "agentbench-fleet-")
		if err != nil {
			return fail(err)
		}
		o.fleetIn = fd
		if !o.keep {
			onCleanUp(func() { os.RemoveAll(fd) })
		}
	}
	o.baseline = filepath.Join(dir, "baseline")
	if err := goBuild(o.baseline, "github.com/nodetrust/nodetrust/test/bench/agentbench/baseline"); err != nil {
		return fail(err)
	}

	rep := &report{opts: o, started: time.Now(), load: benchkit.LoadAvg(), nofile: nofile}
	if o.only == "" || o.only == "start" || o.only == "idle" {
		t := newBenchT()
		env, err := startEnv(t, nil)
		if err != nil {
			return fail(err)
		}
		if o.only != "idle" {
			if rep.start, err = benchStart(o, env); err != nil {
				t.close()
				return fail(fmt.Errorf("start to credentials: %w", err))
			}
		}
		if o.only != "start" {
			if rep.idle, err = benchIdle(o, env); err != nil {
				t.close()
				return fail(fmt.Errorf("idle: %w", err))
			}
		}
		t.close()
	}
	if o.only == "" || o.only == "fleet" {
		if rep.fleet, err = benchFleet(o); err != nil {
			return fail(fmt.Errorf("fleet: %w", err))
		}
	}
	rep.took = time.Since(rep.started)
	rep.print(os.Stdout)
	if !rep.pass() {
		return 1
	}
	return 0
}

// benchT stands in for *testing.T so the harness can run in a program:
// Fatal panics with a fatalError, which startEnv turns into an error.
type benchT struct {
	mu       sync.Mutex
	cleanups []func()
}

type fatalError struct{ msg string }

func newBenchT() *benchT {
	t := &benchT{}
	live.Lock()
	live.set[t] = true
	live.Unlock()
	return t
}

func (t *benchT) Helper()                           {}
func (t *benchT) Fatal(args ...any)                 { panic(fatalError{fmt.Sprint(args...)}) }
func (t *benchT) Fatalf(format string, args ...any) { panic(fatalError{fmt.Sprintf(format, args...)}) }

func (t *benchT) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

// close runs the cleanups, last registered first, each once.
func (t *benchT) close() {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			break
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		f()
	}
	live.Lock()
	delete(live.set, t)
	live.Unlock()
}

// live holds every benchT not yet closed, and the bench's own cleanups.
var live = struct {
	sync.Mutex
	set  map[*benchT]bool
	root benchT
}{set: map[*benchT]bool{}}

func onCleanUp(f func()) { live.root.Cleanup(f) }

// cleanUp stops every child process, stops every harness (waiting at most
// limit) and then runs the bench's own cleanups (temporary folders).
func cleanUp(limit time.Duration) {
	benchkit.StopAll()
	live.Lock()
	var ts []*benchT
	for t := range live.set {
		ts = append(ts, t)
	}
	live.Unlock()
	done := make(chan struct{})
	go func() {
		for _, t := range ts {
			t.close()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
		fmt.Fprintln(os.Stderr, "agentbench: servers did not stop in time")
	}
	live.root.close()
}

// startEnv starts the server side with the given nodes (nil: one) on the
// real clock.
func startEnv(t *benchT, nodes []string) (env *harness.Env, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatalError)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("harness: %s", f.msg)
		}
	}()
	return harness.Start(t, harness.Options{Nodes: nodes, Clock: clock.Real{}}), nil
}

// ensureBinary builds the nodetrust binary when -bin names no file.
func ensureBinary(o *options) error {
	if _, err := os.Stat(o.bin); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "agentbench: %s missing; building it\n", o.bin)
		if err := goBuild(o.bin, "github.com/nodetrust/nodetrust/cmd/nodetrust"); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	abs, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	o.bin = abs
	// A binary older than the agent command would fail in confusing ways.
	if out, err := exec.Command(o.bin, "agent", "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "once") {
		return fmt.Errorf("%s has no working agent command (stale build? rebuild with go build -o %s ./cmd/nodetrust): %v\n%s", o.bin, o.bin, err, out)
	}
	return nil
}

func goBuild(out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}
