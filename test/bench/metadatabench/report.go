package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
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

type verdict struct {
	name string
	ok   bool
}

func (r *report) verdicts() []verdict {
	var v []verdict
	if r.get != nil {
		h, m := median(r.get.hello), median(r.get.meta)
		v = append(v,
			verdict{"GET req/s >= 60% of baseline", m.rate() >= targetRatio*h.rate()},
			verdict{"GET req/s >= 25,000", m.rate() >= targetRate})
	}
	if w := r.watch; w != nil {
		v = append(v,
			verdict{"watchers RSS < 150 MB", w.meta.parked.rss < targetWatchMB},
			verdict{"all watchers woken < 1 s", w.meta.errs == 0 && w.meta.woken == w.meta.n && w.meta.max < targetWake})
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
	fmt.Fprintf(w, "\nmetadatabench %s, %s, took %v\n", r.started.UTC().Format("2006-01-02 15:04 MST"), machine(), r.took.Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }
	if g := r.get; g != nil {
		h, m := median(g.hello), median(g.meta)
		fmt.Fprintf(w, "\nSmall GET: %d keep-alive connections, %v warm-up + %v measured per run, %d runs per server alternating, medians.\n",
			o.conns, o.warmup, o.duration, o.runs)
		fmt.Fprintf(w, "metadata: GET %s (%d-byte value) from a host address; baseline: net/http hello world (%d-byte body).\n",
			smallPath, len(smallValue), len(helloBody))
		row("", "metadata", "baseline", "ratio", "target", "")
		row("requests/s", thousands(m.rate()), thousands(h.rate()), ratio(m.rate(), h.rate()),
			fmt.Sprintf(">= %.2f of baseline", targetRatio), passFail(m.rate() >= targetRatio*h.rate()))
		row("", "", "", "", ">= "+thousands(targetRate)+" req/s", passFail(m.rate() >= targetRate))
		row("latency p50", ms(m.p50), ms(h.p50), ratio(float64(m.p50), float64(h.p50)), "", "")
		row("latency p99", ms(m.p99), ms(h.p99), ratio(float64(m.p99), float64(h.p99)), "", "")
		row("server RSS after run", mb(m.mem.rss), mb(h.mem.rss), ratio(float64(m.mem.rss), float64(h.mem.rss)), "", "")
		tw.Flush()
		runs := func(rs []loadResult) string {
			var s []string
			for _, x := range rs {
				s = append(s, fmt.Sprintf("%s (server %.2f, other %.2f CPUs)", thousands(x.rate()), x.cpu.server, x.cpu.foreign))
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
		row("RSS, all parked", mb(m.parked.rss), mb(h.parked.rss), ratio(float64(m.parked.rss), float64(h.parked.rss)),
			"< 150 MB", passFail(m.parked.rss < targetWatchMB))
		row("RSS peak (VmHWM)", mb(m.parked.hwm), mb(h.parked.hwm), ratio(float64(m.parked.hwm), float64(h.parked.hwm)), "", "")
		per := func(r watchRun) float64 { return float64(r.parked.rss-r.idle.rss) / float64(r.n) }
		row("RSS per long-poll", fmt.Sprintf("%.1f KB", per(m)/1e3), fmt.Sprintf("%.1f KB", per(h)/1e3), ratio(per(m), per(h)), "", "")
		row("RSS idle (before)", mb(m.idle.rss), mb(h.idle.rss), ratio(float64(m.idle.rss), float64(h.idle.rss)), "", "")
		row("time to park all", ms(m.setup), ms(h.setup), ratio(float64(m.setup), float64(h.setup)), "", "")
		row("server CPU, all parked", fmt.Sprintf("%.1f%%", 100*m.parkedCPU), fmt.Sprintf("%.1f%%", 100*h.parkedCPU), "", "", "")
		row("answered with new value", fmt.Sprintf("%d/%d", m.woken, m.n), fmt.Sprintf("%d/%d", h.woken, h.n), "", "all", passFail(m.errs == 0 && m.woken == m.n))
		row("wake latency first", ms(m.first), ms(h.first), ratio(float64(m.first), float64(h.first)), "", "")
		row("wake latency p50", ms(m.p50), ms(h.p50), ratio(float64(m.p50), float64(h.p50)), "", "")
		row("wake latency p99", ms(m.p99), ms(h.p99), ratio(float64(m.p99), float64(h.p99)), "", "")
		row("wake latency max", ms(m.max), ms(h.max), ratio(float64(m.max), float64(h.max)), "< 1 s", passFail(m.max < targetWake))
		tw.Flush()
		fmt.Fprintf(w, "CPUs from change to last answer: metadata server %.2f, bench %.2f, other %.2f; baseline server %.2f, bench %.2f, other %.2f\n",
			m.wakeCPU.server, m.wakeCPU.self, m.wakeCPU.foreign, h.wakeCPU.server, h.wakeCPU.self, h.wakeCPU.foreign)
		if m.firstErr != nil {
			fmt.Fprintf(w, "metadata: %d watcher errors, first: %v\n", m.errs, m.firstErr)
		}
		if h.firstErr != nil {
			fmt.Fprintf(w, "baseline: %d watcher errors, first: %v\n", h.errs, h.firstErr)
		}
	}
	fmt.Fprintln(w)
	for _, v := range r.verdicts() {
		fmt.Fprintf(w, "%s  %s\n", passFail(v.ok), v.name)
	}
}

func maxForeign(g *getResult) float64 {
	var m float64
	for _, r := range append(append([]loadResult(nil), g.hello...), g.meta...) {
		m = max(m, r.cpu.foreign)
	}
	return m
}
