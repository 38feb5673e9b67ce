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
	targetRatio   = 0.60        // metadata req/s over the baseline's
	targetRate    = 25000       // metadata req/s
	targetWatchMB = 150e6       // server RSS with the watchers parked
	targetWake    = time.Second // from the change to the last answer
)

type report struct {
	opts    options
	started time.Time
	took    time.Duration
	get     *getResult
	watch   *watchResult
}

func (r *report) verdicts() []benchkit.Verdict {
	var v []benchkit.Verdict
	if r.get != nil {
		h, m := median(r.get.hello), median(r.get.meta)
		v = append(v,
			benchkit.Verdict{Name: "GET req/s >= 60% of baseline", OK: m.rate() >= targetRatio*h.rate()},
			benchkit.Verdict{Name: "GET req/s >= 25,000", OK: m.rate() >= targetRate})
	}
	if w := r.watch; w != nil {
		v = append(v,
			benchkit.Verdict{Name: "watchers RSS < 150 MB", OK: w.meta.parked.RSS < targetWatchMB},
			benchkit.Verdict{Name: "all watchers woken < 1 s", OK: w.meta.errs == 0 && w.meta.woken == w.meta.n && w.meta.max < targetWake})
	}
	return v
}

func (r *report) pass() bool { return benchkit.AllPass(r.verdicts()) }

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func thousands(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (r *report) print(w io.Writer) {
	o := r.opts
	fmt.Fprintf(w, "\nmetadatabench %s, %s, took %v\n", r.started.UTC().Format("2006-01-02 15:04 MST"), benchkit.Machine(), r.took.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }
	if g := r.get; g != nil {
		h, m := median(g.hello), median(g.meta)
		fmt.Fprintf(w, "\nSmall GET: %d keep-alive connections, %v warm-up + %v measured per run, %d runs per server alternating, medians.\n",
			o.conns, o.warmup, o.duration, o.runs)
		fmt.Fprintf(w, "metadata: GET %s (%d-byte value) from a host address; baseline: net/http hello world (%d-byte body).\n",
			smallPath, len(smallValue), len(helloBody))
		row("", "metadata", "baseline", "ratio", "target", "")
		row("requests/s", thousands(m.rate()), thousands(h.rate()), benchkit.Ratio(m.rate(), h.rate()),
			fmt.Sprintf(">= %.2f of baseline", targetRatio), benchkit.PassFail(m.rate() >= targetRatio*h.rate()))
		row("", "", "", "", ">= "+thousands(targetRate)+" req/s", benchkit.PassFail(m.rate() >= targetRate))
		row("latency p50", ms(m.p50), ms(h.p50), benchkit.Ratio(float64(m.p50), float64(h.p50)), "", "")
		row("latency p99", ms(m.p99), ms(h.p99), benchkit.Ratio(float64(m.p99), float64(h.p99)), "", "")
		row("server RSS after run", benchkit.MB(m.mem.RSS), benchkit.MB(h.mem.RSS), benchkit.Ratio(float64(m.mem.RSS), float64(h.mem.RSS)), "", "")
		tw.Flush()
		runs := func(rs []loadResult) string {
			var s []string
			for _, x := range rs {
				s = append(s, fmt.Sprintf("%s (server %.2f, other %.2f CPUs)", thousands(x.rate()), x.cpu.Proc(0), x.cpu.Foreign))
			}
			return strings.Join(s, ", ")
		}
		fmt.Fprintf(w, "runs, req/s: metadata %s\n             baseline %s\n", runs(g.meta), runs(g.hello))
		if g.disturbed > 0 {
			fmt.Fprintf(w, "%d runs were run again: other processes used more than %.2f CPUs during them.\n", g.disturbed, o.maxOther)
		}
		if foreign := maxForeign(g); foreign > 0.10 {
			fmt.Fprintf(w, "NOTE: other processes used up to %.2f of the %d CPUs during a kept run; the numbers are disturbed.\n", foreign, runtime.NumCPU())
		}
	}
	if x := r.watch; x != nil {
		m, h := x.meta, x.hello
		fmt.Fprintf(w, "\nwait_for_change: %d long-polls from %d host addresses (127.0.10.1-%d), each after a GET for its ETag.\n",
			m.n, o.instances, o.instances)
		fmt.Fprintf(w, "metadata: data file rewritten + SIGHUP; baseline: net/http handlers blocked on a channel closed on SIGHUP.\n")
		row("", "metadata", "baseline", "ratio", "target", "")
		row("RSS, all parked", benchkit.MB(m.parked.RSS), benchkit.MB(h.parked.RSS), benchkit.Ratio(float64(m.parked.RSS), float64(h.parked.RSS)),
			"< 150 MB", benchkit.PassFail(m.parked.RSS < targetWatchMB))
		row("RSS peak (VmHWM)", benchkit.MB(m.parked.HWM), benchkit.MB(h.parked.HWM), benchkit.Ratio(float64(m.parked.HWM), float64(h.parked.HWM)), "", "")
		per := func(r watchRun) float64 { return float64(r.parked.RSS-r.idle.RSS) / float64(r.n) }
		row("RSS per long-poll", fmt.Sprintf("%.1f KB", per(m)/1e3), fmt.Sprintf("%.1f KB", per(h)/1e3), benchkit.Ratio(per(m), per(h)), "", "")
		row("RSS idle (before)", benchkit.MB(m.idle.RSS), benchkit.MB(h.idle.RSS), benchkit.Ratio(float64(m.idle.RSS), float64(h.idle.RSS)), "", "")
		row("time to park all", ms(m.setup), ms(h.setup), benchkit.Ratio(float64(m.setup), float64(h.setup)), "", "")
		row("server CPU, all parked", fmt.Sprintf("%.1f%%", 100*m.parkedCPU), fmt.Sprintf("%.1f%%", 100*h.parkedCPU), "", "", "")
		row("answered with new value", fmt.Sprintf("%d/%d", m.woken, m.n), fmt.Sprintf("%d/%d", h.woken, h.n), "", "all", benchkit.PassFail(m.errs == 0 && m.woken == m.n))
		row("wake latency first", ms(m.first), ms(h.first), benchkit.Ratio(float64(m.first), float64(h.first)), "", "")
		row("wake latency p50", ms(m.p50), ms(h.p50), benchkit.Ratio(float64(m.p50), float64(h.p50)), "", "")
		row("wake latency p99", ms(m.p99), ms(h.p99), benchkit.Ratio(float64(m.p99), float64(h.p99)), "", "")
		row("wake latency max", ms(m.max), ms(h.max), benchkit.Ratio(float64(m.max), float64(h.max)), "< 1 s", benchkit.PassFail(m.max < targetWake))
		tw.Flush()
		fmt.Fprintf(w, "CPUs from change to last answer: metadata server %.2f, bench %.2f, other %.2f; baseline server %.2f, bench %.2f, other %.2f\n",
			m.wakeCPU.Proc(0), m.wakeCPU.Self, m.wakeCPU.Foreign, h.wakeCPU.Proc(0), h.wakeCPU.Self, h.wakeCPU.Foreign)
		if m.firstErr != nil {
			fmt.Fprintf(w, "metadata: %d watcher errors, first: %v\n", m.errs, m.firstErr)
		}
		if h.firstErr != nil {
			fmt.Fprintf(w, "baseline: %d watcher errors, first: %v\n", h.errs, h.firstErr)
		}
	}
	fmt.Fprintln(w)
	benchkit.PrintVerdicts(w, r.verdicts())
}

func maxForeign(g *getResult) float64 {
	var m float64
	for _, r := range append(append([]loadResult(nil), g.hello...), g.meta...) {
		m = max(m, r.cpu.Foreign)
	}
	return m
}
