package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a server process the bench started.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	err     error // set when exited is closed
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
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	children.set[c] = true
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop ends the child: SIGTERM, then SIGKILL after 10 s.
func (c *child) stop() {
	children.Lock()
	delete(children.set, c)
	children.Unlock()
	select {
	case <-c.exited:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
	}
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
		wg.Go(c.stop)
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

// waitReady waits until addr accepts connections, the child exits, or 15 s.
func (c *child) waitReady(addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited: %v\n%s", c.name, c.err, c.logTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after 15s: %v\n%s", c.name, addr, err, c.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port free at the time of the
// call.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// memStat is a process's resident memory, in bytes.
type memStat struct {
	rss, hwm int64
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

// cpuSample is CPU time in clock ticks: all CPUs busy, this process, a child.
type cpuSample struct {
	busy, self, child int64
	at                time.Time
}

func sampleCPU(pid int) cpuSample {
	s := cpuSample{at: time.Now(), self: procTicks("self"), child: procTicks(strconv.Itoa(pid))}
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

// procTicks is utime+stime of /proc/<id>/stat.
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

// cpuUse is how busy the machine was between two samples, in CPUs: the
// bench, the server, and everything else (other work on the machine that
// disturbs the measurement).
type cpuUse struct{ self, server, foreign float64 }

func cpuBetween(a, b cpuSample) cpuUse {
	const hz = 100 // USER_HZ on Linux
	sec := b.at.Sub(a.at).Seconds()
	if sec <= 0 {
		return cpuUse{}
	}
	self := float64(b.self-a.self) / hz / sec
	srv := float64(b.child-a.child) / hz / sec
	all := float64(b.busy-a.busy) / hz / sec
	return cpuUse{self: self, server: srv, foreign: max(0, all-self-srv)}
}

// waitQuiet waits, at most limit, until other processes leave the CPUs alone
// (under 0.1 CPUs over half a second), so a run starts on a quiet machine.
// It reports what other processes used in the last half second.
func waitQuiet(limit time.Duration) float64 {
	end := time.Now().Add(limit)
	for {
		a := sampleCPU(0)
		time.Sleep(500 * time.Millisecond)
		u := cpuBetween(a, sampleCPU(0))
		if u.foreign < 0.1 || time.Now().After(end) {
			return u.foreign
		}
	}
}
