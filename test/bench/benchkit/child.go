// Package benchkit is what the benchmark programs under test/bench share:
// child processes that are stopped with the bench, readers of a process's
// memory and of the machine's CPU time from /proc, and helpers for printing
// the result tables and verdicts.
package benchkit

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Child is a process the bench started.
type Child struct {
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
	set map[*Child]bool
}

// StartChild starts bin with args, its output going to logPath. The child
// dies with the bench (on Linux, even when the bench is killed); StopAll
// stops every child still running.
func StartChild(name, logPath, bin string, args ...string) (*Child, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = childAttr()
	c := &Child{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	children.Lock()
	defer children.Unlock()
	if children.set == nil {
		children.set = map[*Child]bool{}
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

// PID is the child's process id.
func (c *Child) PID() int { return c.cmd.Process.Pid }

// Started is when the child was started (just before exec).
func (c *Child) Started() time.Time { return c.started }

// Exited is closed when the child has exited.
func (c *Child) Exited() <-chan struct{} { return c.exited }

// Err is the child's exit error, once Exited is closed.
func (c *Child) Err() error { return c.err }

// Wait waits for the child to exit, at most limit (then it is killed), and
// returns how long it ran.
func (c *Child) Wait(limit time.Duration) (time.Duration, error) {
	select {
	case <-c.exited:
	case <-time.After(limit):
		c.cmd.Process.Kill()
		<-c.exited
		return 0, fmt.Errorf("%s still running after %v; killed\n%s", c.name, limit, c.LogTail())
	}
	if c.err != nil {
		return 0, fmt.Errorf("%s: %w\n%s", c.name, c.err, c.LogTail())
	}
	return c.ended.Sub(c.started), nil
}

// Stop ends the child, SIGTERM then SIGKILL after 10 s, and returns how long
// it took to exit after SIGTERM and its exit error. StopAll leaves a child
// alone once Stop has been called on it.
func (c *Child) Stop() (time.Duration, error) {
	children.Lock()
	delete(children.set, c)
	children.Unlock()
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

// StopAll stops every child still running.
func StopAll() {
	children.Lock()
	var cs []*Child
	for c := range children.set {
		cs = append(cs, c)
	}
	children.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { c.Stop() })
	}
	wg.Wait()
}

// LogTail is the end of the child's output, for error messages.
func (c *Child) LogTail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// WaitReady waits until addr accepts connections, the child exits, or 15 s.
func (c *Child) WaitReady(addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited: %v\n%s", c.name, c.err, c.LogTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after 15s: %v\n%s", c.name, addr, err, c.LogTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreeAddr returns a loopback address with a port free at the time of the
// call.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
