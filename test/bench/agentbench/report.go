package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nodetrust/nodetrust/test/bench/benchkit"
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

func (r *report) verdicts() []benchkit.Verdict {
	var v []benchkit.Verdict
	if s := r.start; s != nil {
		v = append(v, benchkit.Verdict{Name: "start to credentials (process) p50 < 150 ms", OK: benchkit.Pct(s.proc, 0.5) < targetStart})
	}
	if i := r.idle; i != nil {
		v = append(v, benchkit.Verdict{Name: "idle agent RSS < 30 MB", OK: i.agent.maxRSS < targetRSS && i.agent.end.RSS < targetRSS})
	}
	if f := r.fleet; f != nil {
		v = append(v, benchkit.Verdict{Name: fmt.Sprintf("%d agents at once, zero failures", f.n), OK: f.failed == 0 && f.ok == f.n && f.attempts == 0})
	}
	return v
}

func (r *report) pass() bool { return benchkit.AllPass(r.verdicts()) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

func (r *report) print(w io.Writer) {
	o := r.opts
	fmt.Fprintf(w, "\nagentbench %s, %s, load average at start %s, took %v\n",
		r.started.UTC().Format("2006-01-02 15:04 MST"), benchkit.Machine(), r.load, r.took.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }
	durRow := func(name string, a, b time.Duration, target string, ok bool) {
		pf := ""
		if target != "" {
			pf = benchkit.PassFail(ok)
		}
		row(name, ms(a), ms(b), benchkit.Ratio(float64(a), float64(b)), target, pf)
	}
	if s := r.start; s != nil {
		fmt.Fprintf(w, "\nStart to credentials: full bootstrap of %s from a fresh state folder, %d timed runs of each, alternating with the baseline (1 untimed warm-up each).\n",
			s.node, len(s.proc))
		fmt.Fprintf(w, "process: exec of `nodetrust agent --once` to exit 0, client certificate checked on disk; baseline: a minimal Go process making one HTTPS GET /healthz to the same API.\n")
		fmt.Fprintf(w, "in-process: agent.New + Once; baseline: one HTTPS GET /healthz on a new transport (TLS handshake + round trip).\n")
		row("", "agent", "baseline", "ratio", "target", "")
		durRow("process p50", benchkit.Pct(s.proc, 0.5), benchkit.Pct(s.procBase, 0.5), "< 150 ms", benchkit.Pct(s.proc, 0.5) < targetStart)
		durRow("process p90", benchkit.Pct(s.proc, 0.9), benchkit.Pct(s.procBase, 0.9), "", false)
		durRow("process max", benchkit.Pct(s.proc, 1), benchkit.Pct(s.procBase, 1), "", false)
		durRow("in-process p50", benchkit.Pct(s.inproc, 0.5), benchkit.Pct(s.inprocBase, 0.5), "", false)
		durRow("in-process p90", benchkit.Pct(s.inproc, 0.9), benchkit.Pct(s.inprocBase, 0.9), "", false)
		durRow("in-process max", benchkit.Pct(s.inproc, 1), benchkit.Pct(s.inprocBase, 1), "", false)
		tw.Flush()
		var parts []string
		for i, name := range stepNames {
			var d []time.Duration
			for _, st := range s.steps {
				d = append(d, st[i])
			}
			parts = append(parts, fmt.Sprintf("%s %s", name, ms(benchkit.Pct(d, 0.5))))
		}
		fmt.Fprintf(w, "in-process steps, p50 each: %s\n", strings.Join(parts, ", "))
		fmt.Fprintf(w, "process start-up and exit, p50 process - p50 in-process: %s; ECDSA P-256 key generation + CSR signature: %.3f ms (median of 200)\n",
			ms(benchkit.Pct(s.proc, 0.5)-benchkit.Pct(s.inproc, 0.5)), float64(s.keySign)/1e6)
		fmt.Fprintf(w, "CPUs during the runs: bench process (server side, in-process agents) %.2f, agent and baseline processes %.2f, other %.2f (%.2f just before)\n",
			s.cpu.Self, s.cpu.Children, s.cpu.Foreign, s.quiet)
	}
	if i := r.idle; i != nil {
		a, b := i.agent, i.base
		fmt.Fprintf(w, "\nIdle: `nodetrust agent --config` (long-running, metricsListen on) after its bootstrap (credentials on disk %s after exec, /healthz 200),\n", ms(i.toCreds))
		fmt.Fprintf(w, "watched for %v with no request to it; baseline: a minimal Go process that sleeps, watched over the same window.\n", i.window)
		row("", "agent", "baseline", "ratio", "target", "")
		row("RSS idle (VmRSS, end)", benchkit.MB(a.end.RSS), benchkit.MB(b.end.RSS), benchkit.Ratio(float64(a.end.RSS), float64(b.end.RSS)), "< 30 MB", benchkit.PassFail(a.end.RSS < targetRSS && a.maxRSS < targetRSS))
		row("RSS max in window", benchkit.MB(a.maxRSS), benchkit.MB(b.maxRSS), benchkit.Ratio(float64(a.maxRSS), float64(b.maxRSS)), "", "")
		row("RSS at window start", benchkit.MB(a.start.RSS), benchkit.MB(b.start.RSS), benchkit.Ratio(float64(a.start.RSS), float64(b.start.RSS)), "", "")
		row("  of which anonymous", benchkit.MB(a.end.Anon), benchkit.MB(b.end.Anon), benchkit.Ratio(float64(a.end.Anon), float64(b.end.Anon)), "", "")
		row("  of which file-backed", benchkit.MB(a.end.File), benchkit.MB(b.end.File), benchkit.Ratio(float64(a.end.File), float64(b.end.File)), "", "")
		row("RSS peak (VmHWM)", benchkit.MB(a.end.HWM), benchkit.MB(b.end.HWM), benchkit.Ratio(float64(a.end.HWM), float64(b.end.HWM)), "", "")
		row("CPU idle (of one CPU)", fmt.Sprintf("%.1f%%", 100*a.cpu), fmt.Sprintf("%.1f%%", 100*b.cpu), "", "", "")
		tw.Flush()
		stop := fmt.Sprintf("exited 0 %s after SIGTERM", ms(i.stopTook))
		if i.stopErr != nil {
			stop = fmt.Sprintf("SIGTERM: %v", i.stopErr)
		}
		fmt.Fprintf(w, "CPU is counted in clock ticks (%.1f%% resolution over the window); other processes used %.2f CPUs in it (%.2f just before); agent %s\n",
			100/(benchkit.Hz*i.window.Seconds()), i.foreign, i.quiet, stop)
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
		row("with credentials", fmt.Sprintf("%d/%d", f.ok, f.n), fmt.Sprintf("%d/%d", f.n-b.failed, f.n), "", "all", benchkit.PassFail(f.ok == f.n && f.failed == 0))
		row("failed attempts (retried)", fmt.Sprint(f.attempts), "", "", "0", benchkit.PassFail(f.attempts == 0))
		durRow("total (release to last)", f.total, b.total, "", false)
		durRow("per agent p50", benchkit.Pct(f.per, 0.5), benchkit.Pct(b.per, 0.5), "", false)
		durRow("per agent p99", benchkit.Pct(f.per, 0.99), benchkit.Pct(b.per, 0.99), "", false)
		durRow("per agent max", benchkit.Pct(f.per, 1), benchkit.Pct(b.per, 1), "", false)
		row("agents per second", fmt.Sprintf("%.0f", float64(f.n)/f.total.Seconds()), fmt.Sprintf("%.0f", float64(f.n)/b.total.Seconds()), benchkit.Ratio(b.total.Seconds(), f.total.Seconds()), "", "")
		tw.Flush()
		fmt.Fprintf(w, "peak open files of the bench process (both ends of every connection): %d of %d\n", f.maxFDs, r.nofile)
		fmt.Fprintf(w, "CPUs: agents run, bench %.2f, other %.2f (%.2f just before); baseline run, bench %.2f, other %.2f\n",
			f.cpu.Self, f.cpu.Foreign, f.quiet, b.cpu.Self, b.cpu.Foreign)
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
	benchkit.PrintVerdicts(w, r.verdicts())
}

// disturbed is the most CPUs other processes used during a measurement.
func (r *report) disturbed() float64 {
	var d float64
	if r.start != nil {
		d = max(d, r.start.cpu.Foreign)
	}
	if r.idle != nil {
		d = max(d, r.idle.foreign)
	}
	if r.fleet != nil {
		d = max(d, r.fleet.cpu.Foreign, r.fleet.base.cpu.Foreign)
	}
	return d
}
