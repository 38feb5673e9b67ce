package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

const (
	targetBulk      = 1e9 // bytes per second
	targetBulkOfTLS = 0.40
	targetOverhead  = 150 * time.Microsecond
	targetLoadP99   = 5 * time.Millisecond
)

// stat is a median with its range over the runs.
type stat struct{ med, lo, hi float64 }

func statOf(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{m, s[0], s[len(s)-1]}
}

func (s stat) fmt(unit func(float64) string) string {
	if s.lo == s.hi {
		return unit(s.med)
	}
	return fmt.Sprintf("%s (%s–%s)", unit(s.med), unit(s.lo), unit(s.hi))
}

func mbps(v float64) string { return fmt.Sprintf("%.0f MB/s", v/1e6) }
func usec(v float64) string { return fmt.Sprintf("%.0f µs", v/1e3) }
func msec(v float64) string { return fmt.Sprintf("%.2f ms", v/1e6) }
func sec(v float64) string  { return fmt.Sprintf("%.2f s", v/1e9) }
func kib(v float64) string  { return fmt.Sprintf("%.1f KiB", v/1024) }

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func report(o options, res map[string][]float64, conc map[string]concResult, direct concResult, idle idleResult) bool {
	const (
		dn = "tunnel DialNode"
		fe = "tunnel CONNECT (unix)"
		tc = "direct TCP"
		tl = "raw TLS"
	)
	get := func(p, k string) stat { return statOf(res[p+"/"+k]) }
	all := true
	var rows [][]string
	row := func(c ...string) { rows = append(rows, c) }
	row("measurement", "direct TCP", "raw TLS", "tunnel DialNode", "DialNode vs baseline", "CONNECT (unix)", "target", "DialNode", "CONNECT")

	for _, d := range []struct{ k, name string }{{"down", "bulk download, 1 conn"}, {"up", "bulk upload, 1 conn"}} {
		t, s, n, f := get(tc, d.k), get(tl, d.k), get(dn, d.k), get(fe, d.k)
		ok := func(x stat) bool { return x.med >= targetBulk && x.med >= targetBulkOfTLS*s.med }
		all = all && ok(n)
		row(d.name, t.fmt(mbps), s.fmt(mbps), n.fmt(mbps), fmt.Sprintf("%.0f%% of TLS", 100*n.med/s.med), f.fmt(mbps),
			fmt.Sprintf("≥ %s and ≥ %.0f%% of TLS", mbps(targetBulk), 100*targetBulkOfTLS), verdict(ok(n)), "info: "+verdict(ok(f)))
	}
	for _, d := range []struct{ k, name string }{{"down cpu", "CPU time per GB, download"}, {"up cpu", "CPU time per GB, upload"}} {
		t, s, n, f := get(tc, d.k), get(tl, d.k), get(dn, d.k), get(fe, d.k)
		row(d.name+" (whole process, sink included)", t.fmt(sec), s.fmt(sec), n.fmt(sec), fmt.Sprintf("%.1f× TLS", n.med/s.med), f.fmt(sec), "", "", "")
	}
	t50, s50, n50, f50 := get(tc, "p50"), get(tl, "p50"), get(dn, "p50"), get(fe, "p50")
	over := func(x stat) float64 { return x.med - t50.med }
	okOver := func(x stat) bool { return time.Duration(over(x)) < targetOverhead }
	all = all && okOver(n50)
	row("small round trip p50, reused conn", t50.fmt(usec), s50.fmt(usec), n50.fmt(usec),
		fmt.Sprintf("+%s vs TCP", usec(over(n50))), fmt.Sprintf("%s (+%s)", f50.fmt(usec), usec(over(f50))),
		"overhead < "+usec(float64(targetOverhead)), verdict(okOver(n50)), "info: "+verdict(okOver(f50)))
	row("small round trip p99, reused conn", get(tc, "p99").fmt(usec), get(tl, "p99").fmt(usec), get(dn, "p99").fmt(usec), "",
		get(fe, "p99").fmt(usec), "", "", "")
	l50, l99 := get(dn, "load p50"), get(dn, "load p99")
	fl50, fl99 := get(fe, "load p50"), get(fe, "load p99")
	okLoad := func(x stat) bool { return time.Duration(x.med) < targetLoadP99 }
	all = all && okLoad(l99)
	row("small p50 during a bulk download in the same tunnel", get(dn, "ctl p50").fmt(usec)+" (direct, same load)", "", l50.fmt(usec), "", fl50.fmt(usec), "", "", "")
	row("small p99 during a bulk download in the same tunnel", get(dn, "ctl p99").fmt(msec)+" (direct, same load)", "", l99.fmt(msec), "", fl99.fmt(msec),
		"< "+msec(float64(targetLoadP99)), verdict(okLoad(l99)), "info: "+verdict(okLoad(fl99)))
	cn, cf := conc[dn], conc[fe]
	okConc := func(c concResult) bool { return c.failed == 0 }
	all = all && okConc(cn) && okConc(cf)
	cfmt := func(c concResult) string {
		return fmt.Sprintf("%v, %d failed", c.elapsed.Round(time.Millisecond), c.failed)
	}
	row(fmt.Sprintf("%d concurrent connections, 1 round trip each", o.conns), cfmt(direct), "", cfmt(cn), "", cfmt(cf),
		"all succeed", verdict(okConc(cn)), verdict(okConc(cf)))
	mfmt := func(rss, heap float64) string { return fmt.Sprintf("RSS %s, heap+stacks %s", kib(rss), kib(heap)) }
	row("memory per idle open connection", mfmt(direct.rssPer, direct.heapPer), "", mfmt(cn.rssPer, cn.heapPer), "", mfmt(cf.rssPer, cf.heapPer), "report", "", "")
	if idle.n > 0 {
		row(fmt.Sprintf("memory per idle agent tunnel (%d agents, both ends, connected in %v)", idle.n, idle.elapsed.Round(time.Millisecond)),
			"", "", mfmt(idle.rssPer, idle.heapPer), "", "", "report", "", "")
	}

	fmt.Printf("\nmedians of %d runs (range in brackets); bulk %v after %v warm-up, %d small round trips, %v under load\n\n",
		o.runs, o.bulk, o.warm, o.small, o.load)
	for i, r := range rows {
		fmt.Println("| " + strings.Join(r, " | ") + " |")
		if i == 0 {
			fmt.Println(strings.Repeat("| --- ", len(r)) + "|")
		}
	}
	for _, c := range []struct {
		n string
		r concResult
	}{{dn, cn}, {fe, cf}, {tc, direct}} {
		if c.r.firstErr != nil {
			fmt.Printf("\n%s: first failure: %v\n", c.n, c.r.firstErr)
		}
	}
	fmt.Printf("\nresult: %s\n", map[bool]string{true: "all targets PASS", false: "a target FAILED"}[all])
	return all
}
