package benchkit

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"time"
)

// Verdict is one target of a bench and whether it was met.
type Verdict struct {
	Name string
	OK   bool
}

// AllPass reports whether every verdict is a pass.
func AllPass(vs []Verdict) bool {
	for _, v := range vs {
		if !v.OK {
			return false
		}
	}
	return true
}

// PrintVerdicts writes one line per verdict: PASS or FAIL, then its name.
func PrintVerdicts(w io.Writer, vs []Verdict) {
	for _, v := range vs {
		fmt.Fprintf(w, "%s  %s\n", PassFail(v.OK), v.Name)
	}
}

// PassFail is "PASS" when ok, else "FAIL".
func PassFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// Ratio is a/b with two decimals, or "-" when b is 0.
func Ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// MB formats bytes in megabytes (10^6), the unit of the targets.
func MB(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }

// Pct is the nearest-rank percentile p (0-1] of ds.
func Pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Machine describes the Go runtime and the CPUs, for a report's heading.
func Machine() string {
	return fmt.Sprintf("%s %s/%s, %d CPUs, GOMAXPROCS %d", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0))
}
