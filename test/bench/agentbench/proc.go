package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process the bench started.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	started time.Time
	exited  chan struct{}
	ended   time.Time // set when exited is closed
	err     error     // set when exited is closed
}

var children struct {
	sync.Mutex
	set map[*child]bool
}

// startChild starts bin with args, its output going to logPath.
func startChild(name, logPath, bin string, args ...string) (*child, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = childAttr()
	c := &child{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	children.Lock()
	defer children.Unlock()
	if children.set == nil {
		children.set = map[*child]bool{}
	}
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	children.set[c] = true
	go func() {
		c.err = cmd.Wait()
		c.ended = time.Now()
		close(c.exited)
		children.Lock()
		delete(children.set, c)
		children.Unlock()
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// wait waits for the child to exit, at most limit (then it is killed), and
// returns how long it ran.
func (c *child) wait(limit time.Duration) (time.Duration, error) {
	select {
	case <-c.exited:
	case <-time.After(limit):
		c.cmd.Process.Kill()
		<-c.exited
		return 0, fmt.Errorf("%s still running after %v; killed\n%s", c.name, limit, c.logTail())
	}
	if c.err != nil {
		return 0, fmt.Errorf("%s: %w\n%s", c.name, c.err, c.logTail())
	}
	return c.ended.Sub(c.started), nil
}

// stop ends the child, SIGTERM then SIGKILL after 10 s, and returns how long
// it took to exit after SIGTERM and its exit error.
func (c *child) stop() (time.Duration, error) {
	select {
	case <-c.exited:
		return 0, c.err
	default:
	}
	t0 := time.Now()
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
		return 0, fmt.Errorf("%s ignored SIGTERM for 10s; killed", c.name)
	}
	return c.ended.Sub(t0), c.err
}

// stopAll stops every child still running.
func stopAll() {
	children.Lock()
	var cs []*child
	for c := range children.set {
		cs = append(cs, c)
	}
	children.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { c.stop() })
	}
	wg.Wait()
}

// logTail is the end of the child's output, for error messages.
func (c *child) logTail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// memStat is a process's resident memory, in bytes.
type memStat struct {
	rss, hwm   int64
	anon, file int64 // the parts of rss that are anonymous (heap, stacks) and file-backed (the binary)
}

// readMem reads VmRSS and VmHWM of pid from /proc.
func readMem(pid int) (memStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return memStat{}, err
	}
	var m memStat
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.rss
		case "VmHWM":
			dst = &m.hwm
		case "RssAnon":
			dst = &m.anon
		case "RssFile":
			dst = &m.file
		default:
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			*dst = n << 10
		}
	}
	if m.rss == 0 {
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

const hz = 100 // USER_HZ on Linux

// cpuSample is CPU time in clock ticks: all CPUs busy, this process, and
// the processes in pids.
type cpuSample struct {
	busy, self int64
	children   int64 // of the bench's children that have exited
	pids       []int64
	at         time.Time
}

func sampleCPU(pids ...int) cpuSample {
	s := cpuSample{at: time.Now(), self: procTicks("self"), children: childTicks()}
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

// cpuUse is how busy the machine was between two samples, in CPUs: the
// bench, each watched process, and everything else (other work on the
// machine that disturbs the measurement).
type cpuUse struct {
	self     float64
	children float64 // children that exited between the samples
	pids     []float64
	foreign  float64
}

func cpuBetween(a, b cpuSample) cpuUse {
	sec := b.at.Sub(a.at).Seconds()
	if sec <= 0 {
		return cpuUse{}
	}
	u := cpuUse{self: float64(b.self-a.self) / hz / sec, children: float64(b.children-a.children) / hz / sec}
	rest := float64(b.busy-a.busy)/hz/sec - u.self - u.children
	for i := range a.pids {
		p := float64(b.pids[i]-a.pids[i]) / hz / sec
		u.pids = append(u.pids, p)
		rest -= p
	}
	u.foreign = max(0, rest)
	return u
}

// childTicks is the CPU time of the bench's exited children, in clock ticks.
func childTicks() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	us := ru.Utime.Nano() + ru.Stime.Nano()
	return us * hz / 1e9
}

// waitQuiet waits, at most limit, until other processes leave the CPUs
// alone (under 0.1 CPUs over half a second), so a measurement starts on a
// quiet machine. It reports what other processes used in the last half
// second.
func waitQuiet(limit time.Duration) float64 {
	end := time.Now().Add(limit)
	for {
		a := sampleCPU()
		time.Sleep(500 * time.Millisecond)
		u := cpuBetween(a, sampleCPU())
		if u.foreign < 0.1 || time.Now().After(end) {
			return u.foreign
		}
	}
}

// loadAvg is /proc/loadavg's first three fields.
func loadAvg() string {
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

// openFiles counts this process's open file descriptors.
func openFiles() int {
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

// raiseNoFile lifts the soft open-files limit to the hard one (Go does it at
// start-up too; this makes it explicit) and returns the limit.
func raiseNoFile() uint64 {
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
