// Command metadatabench measures nodetrust's metadata server against
// baselines measured in the same run, on loopback, and prints one table:
//
//   - small GET throughput and latency of `nodetrust metadata` (a small
//     instance attribute, read by a host-view caller) against a plain Go
//     net/http hello-world server, each a separate process, loaded by a
//     wrk-like generator over raw keep-alive TCP connections; each server is
//     run several times, alternating, and the medians are compared;
//   - ten thousand parked wait_for_change long-polls spread over 40
//     instances: the server's memory with all of them parked, and how long
//     it takes from a change of the watched value (data file rewritten,
//     SIGHUP) until every one of them has its answer. The baseline is the
//     same load against the hello-world process, whose long-polls are plain
//     net/http handlers blocked on a channel that SIGHUP closes.
//
// Run it from the module root:
//
//	go run ./test/bench/metadatabench -bin bin/nodetrust
//
// It builds the binary first when -bin does not exist. The exit status is 0
// when every target passes, 1 when one fails, 2 on an error. Every server it
// starts is a child process that is stopped on exit and on Ctrl-C. The
// results go to docs/performance.md by hand, with the command that produced
// them.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/test/bench/benchkit"
)

// helloFlag re-executes this binary as the baseline server; it is not listed
// in -help.
const helloFlag = "-serve-hello"

type options struct {
	bin       string
	conns     int
	warmup    time.Duration
	duration  time.Duration
	runs      int
	watchers  int
	instances int
	only      string
	keep      bool
	attach    string
	maxOther  float64
	reruns    int
}

func main() {
	if len(os.Args) == 3 && (os.Args[1] == helloFlag || os.Args[1] == "-"+helloFlag) {
		serveHello(os.Args[2])
		return
	}
	os.Exit(run())
}

func run() int {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/nodetrust", "nodetrust binary (built with go build when missing)")
	flag.IntVar(&o.conns, "conns", 64, "keep-alive connections of the GET load generator")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "warm-up of each GET run, not measured")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured time of each GET run")
	flag.IntVar(&o.runs, "runs", 3, "GET runs of each server, alternating; medians are reported")
	flag.IntVar(&o.watchers, "watchers", 10000, "parked wait_for_change requests")
	flag.IntVar(&o.instances, "instances", 40, "instances (source addresses 127.0.10.N) the watchers are spread over")
	flag.Float64Var(&o.maxOther, "max-other", 0.25, "a GET run during which other processes used more `CPUs` than this is run again")
	flag.IntVar(&o.reruns, "reruns", 2, "at most this many GET runs are run again")
	flag.StringVar(&o.only, "only", "", `run only "get" or "watch"`)
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (data files, server logs)")
	flag.StringVar(&o.attach, "attach", "", "only run the GET load against a server already listening on `ADDR` (say, one under a profiler), once")
	flag.Parse()
	if flag.NArg() != 0 || o.conns < 1 || o.runs < 1 || o.watchers < 1 || o.instances < 1 || o.instances > 250 ||
		o.only != "" && o.only != "get" && o.only != "watch" {
		flag.Usage()
		return 2
	}

	benchkit.RaiseNoFile() // for ten thousand client sockets
	if o.attach != "" {
		r, err := runLoad(o.attach, getRequest(smallPath), o.conns, o.warmup, o.duration)
		if err != nil {
			fmt.Fprintln(os.Stderr, "metadatabench:", err)
			return 2
		}
		fmt.Printf("%s: %.0f req/s, p50 %v, p99 %v\n", o.attach, r.rate(), r.p50, r.p99)
		return 0
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "\nmetadatabench: %v: stopping servers\n", s)
		benchkit.StopAll()
		os.Exit(130)
	}()
	defer benchkit.StopAll()

	if err := ensureBinary(&o); err != nil {
		fmt.Fprintln(os.Stderr, "metadatabench:", err)
		return 2
	}
	dir, err := os.MkdirTemp("", "metadatabench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "metadatabench:", err)
		return 2
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "metadatabench: keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	start := time.Now()
	rep := &report{opts: o, started: start}
	if o.only != "watch" {
		if rep.get, err = benchGet(o, dir); err != nil {
			benchkit.StopAll()
			fmt.Fprintln(os.Stderr, "metadatabench: GET benchmark:", err)
			return 2
		}
	}
	if o.only != "get" {
		if rep.watch, err = benchWatch(o, dir); err != nil {
			benchkit.StopAll()
			fmt.Fprintln(os.Stderr, "metadatabench: watch benchmark:", err)
			return 2
		}
	}
	rep.took = time.Since(start)
	rep.print(os.Stdout)
	if !rep.pass() {
		return 1
	}
	return 0
}

// ensureBinary builds the nodetrust binary when -bin names no file.
func ensureBinary(o *options) error {
	if _, err := os.Stat(o.bin); err == nil {
		abs, err := filepath.Abs(o.bin)
		o.bin = abs
		return err
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fmt.Fprintf(os.Stderr, "metadatabench: %s missing; building it\n", o.bin)
	cmd := exec.Command("go", "build", "-o", o.bin, "github.com/nodetrust/nodetrust/cmd/nodetrust")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build %s: %w", o.bin, err)
	}
	abs, err := filepath.Abs(o.bin)
	o.bin = abs
	return err
}
