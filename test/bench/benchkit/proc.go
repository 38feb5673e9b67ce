package benchkit

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Mem is a process's resident memory, in bytes.
type Mem struct {
	RSS, HWM   int64
	Anon, File int64 // the parts of RSS that are anonymous (heap, stacks) and file-backed (the binary)
}

// ReadMem reads VmRSS, VmHWM, RssAnon and RssFile of pid from /proc.
func ReadMem(pid int) (Mem, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return Mem{}, err
	}
	var m Mem
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		case "RssAnon":
			dst = &m.Anon
		case "RssFile":
			dst = &m.File
		default:
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			*dst = n << 10
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return m, nil
}

// procTicks is utime+stime of /proc/<id>/stat, in clock ticks.
func procTicks(id string) int64 {
	b, err := os.ReadFile("/proc/" + id + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// Hz is the clock tick CPU time is counted in (USER_HZ on Linux).
const Hz = 100

// CPUSample is CPU time in clock ticks: all CPUs busy, this process, and
// the processes asked for, taken At a time.
type CPUSample struct {
	At         time.Time
	busy, self int64
	children   int64 // of the bench's children that have exited
	pids       []int64
}

// SampleCPU samples the machine's, the bench's and pids' CPU time.
func SampleCPU(pids ...int) CPUSample {
	s := CPUSample{At: time.Now(), self: procTicks("self"), children: childTicks()}
	for _, p := range pids {
		s.pids = append(s.pids, procTicks(strconv.Itoa(p)))
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	// cpu user nice system idle iowait irq softirq steal ...
	for i, v := range f {
		if i == 0 || i == 4 || i == 5 || i > 8 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		s.busy += n
	}
	return s
}

// CPUUse is how busy the machine was between two samples, in CPUs: the
// bench, its children that exited in between, each sampled process (in the
// order SampleCPU was given them), and everything else (other work on the
// machine that disturbs the measurement).
type CPUUse struct {
	Self     float64
	Children float64 // children that exited between the samples
	Procs    []float64
	Foreign  float64
}

// Proc is the CPUs the i-th sampled process used; 0 when there is none.
func (u CPUUse) Proc(i int) float64 {
	if i < 0 || i >= len(u.Procs) {
		return 0
	}
	return u.Procs[i]
}

// CPUBetween is the CPU use from sample a to the later sample b, taken for
// the same processes.
func CPUBetween(a, b CPUSample) CPUUse {
	sec := b.At.Sub(a.At).Seconds()
	if sec <= 0 {
		return CPUUse{}
	}
	u := CPUUse{Self: float64(b.self-a.self) / Hz / sec, Children: float64(b.children-a.children) / Hz / sec}
	rest := float64(b.busy-a.busy)/Hz/sec - u.Self - u.Children
	for i := range a.pids {
		p := float64(b.pids[i]-a.pids[i]) / Hz / sec
		u.Procs = append(u.Procs, p)
		rest -= p
	}
	u.Foreign = max(0, rest)
	return u
}

// childTicks is the CPU time of the bench's exited children, in clock ticks.
func childTicks() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	us := ru.Utime.Nano() + ru.Stime.Nano()
	return us * Hz / 1e9
}

// WaitQuiet waits, at most limit, until other processes leave the CPUs
// alone (under 0.1 CPUs over half a second), so a measurement starts on a
// quiet machine. It reports what other processes used in the last half
// second.
func WaitQuiet(limit time.Duration) float64 {
	end := time.Now().Add(limit)
	for {
		a := SampleCPU()
		time.Sleep(500 * time.Millisecond)
		u := CPUBetween(a, SampleCPU())
		if u.Foreign < 0.1 || time.Now().After(end) {
			return u.Foreign
		}
	}
}

// LoadAvg is /proc/loadavg's first three fields, or "?".
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// OpenFiles counts this process's open file descriptors.
func OpenFiles() int {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(1024)
		n += len(names)
		if err != nil {
			return n - 1 // the directory itself
		}
	}
}

// RaiseNoFile lifts the soft open-files limit to the hard one (Go does it at
// start-up too; this makes it explicit) and returns the limit.
func RaiseNoFile() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return lim.Cur
}
