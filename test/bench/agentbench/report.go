package main

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets from the issue.
const (
	targetStart = 150 * time.Millisecond // process start to credentials, p50
	targetRSS   = 30e6                   // idle agent VmRSS, bytes
)

type report struct {
	opts    options
	started time.Time
	took    time.Duration
	load    string // /proc/loadavg at the start
	nofile  uint64
	start   *startResult
	idle    *idleResult
	fleet   *fleetResult
}

type verdict struct {
	name string
	ok   bool
}

func (r *report) verdicts() []verdict {
	var v []verdict
	if s := r.start; s != nil {
		v = append(v, verdict{"start to credentials (process) p50 < 150 ms", pct(s.proc, 0.5) < targetStart})
	}
	if i := r.idle; i != nil {
		v = append(v, verdict{"idle agent RSS < 30 MB", i.agent.maxRSS < targetRSS && i.agent.end.rss < targetRSS})
	}
	if f := r.fleet; f != nil {
		v = append(v, verdict{fmt.Sprintf("%d agents at once, zero failures", f.n), f.failed == 0 && f.ok == f.n && f.attempts == 0})
	}
	return v
}

func (r *report) pass() bool {
	for _, v := range r.verdicts() {
		if !v.ok {
			return false
		}
	}
	return true
}

// pct is the nearest-rank percentile p (0-1] of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
func mb(b int64) string         { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }

func (r *report) print(w io.Writer) {
	o := r.opts
	fmt.Fprintf(w, "\nagentbench %s, %s, load average at start %s, took %v\n",
		r.started.UTC().Format("2006-01-02 15:04 MST"), machine(), r.load, r.took.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }
	durRow := func(name string, a, b time.Duration, target string, ok bool) {
		pf := ""
		if target != "" {
			pf = passFail(ok)
		}
		row(name, ms(a), ms(b), ratio(float64(a), float64(b)), target, pf)
	}
	if s := r.start; s != nil {
		fmt.Fprintf(w, "\nStart to credentials: full bootstrap of %s from a fresh state folder, %d timed runs of each, alternating with the baseline (1 untimed warm-up each).\n",
			s.node, len(s.proc))
		fmt.Fprintf(w, "process: exec of `nodetrust agent --once` to exit 0, client certificate checked on disk; baseline: a minimal Go process making one HTTPS GET /healthz to the same API.\n")
		fmt.Fprintf(w, "in-process: agent.New + Once; baseline: one HTTPS GET /healthz on a new transport (TLS handshake + round trip).\n")
		row("", "agent", "baseline", "ratio", "target", "")
		durRow("process p50", pct(s.proc, 0.5), pct(s.procBase, 0.5), "< 150 ms", pct(s.proc, 0.5) < targetStart)
		durRow("process p90", pct(s.proc, 0.9), pct(s.procBase, 0.9), "", false)
		durRow("process max", pct(s.proc, 1), pct(s.procBase, 1), "", false)
		durRow("in-process p50", pct(s.inproc, 0.5), pct(s.inprocBase, 0.5), "", false)
		durRow("in-process p90", pct(s.inproc, 0.9), pct(s.inprocBase, 0.9), "", false)
		durRow("in-process max", pct(s.inproc, 1), pct(s.inprocBase, 1), "", false)
		tw.Flush()
		var parts []string
		for i, name := range stepNames {
			var d []time.Duration
			for _, st := range s.steps {
				d = append(d, st[i])
			}
			parts = append(parts, fmt.Sprintf("%s %s", name, ms(pct(d, 0.5))))
		}
		fmt.Fprintf(w, "in-process steps, p50 each: %s\n", strings.Join(parts, ", "))
		fmt.Fprintf(w, "process start-up and exit, p50 process - p50 in-process: %s; ECDSA P-256 key generation + CSR signature: %.3f ms (median of 200)\n",
			ms(pct(s.proc, 0.5)-pct(s.inproc, 0.5)), float64(s.keySign)/1e6)
		fmt.Fprintf(w, "CPUs during the runs: bench process (server side, in-process agents) %.2f, agent and baseline processes %.2f, other %.2f (%.2f just before)\n",
			s.cpu.self, s.cpu.children, s.cpu.foreign, s.quiet)
	}
	if i := r.idle; i != nil {
		a, b := i.agent, i.base
		fmt.Fprintf(w, "\nIdle: `nodetrust agent --config` (long-running, metricsListen on) after its bootstrap (credentials on disk %s after exec, /healthz 200),\n", ms(i.toCreds))
		fmt.Fprintf(w, "watched for %v with no request to it; baseline: a minimal Go process that sleeps, watched over the same window.\n", i.window)
		row("", "agent", "baseline", "ratio", "target", "")
		row("RSS idle (VmRSS, end)", mb(a.end.rss), mb(b.end.rss), ratio(float64(a.end.rss), float64(b.end.rss)), "< 30 MB", passFail(a.end.rss < targetRSS && a.maxRSS < targetRSS))
		row("RSS max in window", mb(a.maxRSS), mb(b.maxRSS), ratio(float64(a.maxRSS), float64(b.maxRSS)), "", "")
		row("RSS at window start", mb(a.start.rss), mb(b.start.rss), ratio(float64(a.start.rss), float64(b.start.rss)), "", "")
		row("  of which anonymous", mb(a.end.anon), mb(b.end.anon), ratio(float64(a.end.anon), float64(b.end.anon)), "", "")
		row("  of which file-backed", mb(a.end.file), mb(b.end.file), ratio(float64(a.end.file), float64(b.end.file)), "", "")
		row("RSS peak (VmHWM)", mb(a.end.hwm), mb(b.end.hwm), ratio(float64(a.end.hwm), float64(b.end.hwm)), "", "")
		row("CPU idle (of one CPU)", fmt.Sprintf("%.1f%%", 100*a.cpu), fmt.Sprintf("%.1f%%", 100*b.cpu), "", "", "")
		tw.Flush()
		stop := fmt.Sprintf("exited 0 %s after SIGTERM", ms(i.stopTook))
		if i.stopErr != nil {
			stop = fmt.Sprintf("SIGTERM: %v", i.stopErr)
		}
		fmt.Fprintf(w, "CPU is counted in clock ticks (%.1f%% resolution over the window); other processes used %.2f CPUs in it (%.2f just before); agent %s\n",
			100/(hz*i.window.Seconds()), i.foreign, i.quiet, stop)
	}
	if f := r.fleet; f != nil {
		b := f.base
		fmt.Fprintf(w, "\nFleet: %d agents (agent.New + Once) in the bench process, each with its own state folder and its own node's metadata view\n", f.n)
		fmt.Fprintf(w, "(source address %s-%s), released together against one control plane (started with %d nodes in %s); timeout %v each.\n",
			hostRange(0), hostRange(f.n-1), f.n, ms(f.envStart), o.timeout)
		where := "the bench's disk, shared by all agents (their fsyncs queue on it; each real node has its own)"
		if f.tmpfs {
			where = "a tmpfs, standing in for each node's own disk (the control plane's store stays on disk)"
		}
		fmt.Fprintf(w, "agents' state folders in %s: %s.\n", f.stateIn, where)
		fmt.Fprintf(w, "baseline: %d HTTPS GET /healthz, each on its own new connection, released together against the same API (run before and after the agents; the faster run).\n", f.n)
		row("", "agents", "baseline", "ratio", "target", "")
		row("with credentials", fmt.Sprintf("%d/%d", f.ok, f.n), fmt.Sprintf("%d/%d", f.n-b.failed, f.n), "", "all", passFail(f.ok == f.n && f.failed == 0))
		row("failed attempts (retried)", fmt.Sprint(f.attempts), "", "", "0", passFail(f.attempts == 0))
		durRow("total (release to last)", f.total, b.total, "", false)
		durRow("per agent p50", pct(f.per, 0.5), pct(b.per, 0.5), "", false)
		durRow("per agent p99", pct(f.per, 0.99), pct(b.per, 0.99), "", false)
		durRow("per agent max", pct(f.per, 1), pct(b.per, 1), "", false)
		row("agents per second", fmt.Sprintf("%.0f", float64(f.n)/f.total.Seconds()), fmt.Sprintf("%.0f", float64(f.n)/b.total.Seconds()), ratio(b.total.Seconds(), f.total.Seconds()), "", "")
		tw.Flush()
		fmt.Fprintf(w, "peak open files of the bench process (both ends of every connection): %d of %d\n", f.maxFDs, r.nofile)
		fmt.Fprintf(w, "CPUs: agents run, bench %.2f, other %.2f (%.2f just before); baseline run, bench %.2f, other %.2f\n",
			f.cpu.self, f.cpu.foreign, f.quiet, b.cpu.self, b.cpu.foreign)
		if f.firstErr != nil {
			fmt.Fprintf(w, "%d agents failed, first: %v\n", f.failed, f.firstErr)
		}
		for _, l := range f.firstLogs {
			fmt.Fprintf(w, "agent log: %s\n", l)
		}
		if b.firstErr != nil {
			fmt.Fprintf(w, "baseline: %d requests failed, first: %v\n", b.failed, b.firstErr)
		}
	}
	if d := r.disturbed(); d > 0.25 {
		fmt.Fprintf(w, "\nNOTE: other processes used up to %.2f of the %d CPUs during a measurement; the numbers are disturbed.\n", d, runtime.NumCPU())
	}
	fmt.Fprintln(w)
	for _, v := range r.verdicts() {
		fmt.Fprintf(w, "%s  %s\n", passFail(v.ok), v.name)
	}
}

// disturbed is the most CPUs other processes used during a measurement.
func (r *report) disturbed() float64 {
	var d float64
	if r.start != nil {
		d = max(d, r.start.cpu.foreign)
	}
	if r.idle != nil {
		d = max(d, r.idle.foreign)
	}
	if r.fleet != nil {
		d = max(d, r.fleet.cpu.foreign, r.fleet.base.cpu.foreign)
	}
	return d
}
