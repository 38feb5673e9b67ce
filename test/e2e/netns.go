//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Prefix starts the name of every network namespace the harness creates;
// a name is Prefix + "<pid>-<run>-<role>", so parallel runs never collide and
// Sweep can tell a crashed run's namespaces from a live one's.
const Prefix = "nte2e-"

// netnsDir is where named namespaces are bind-mounted (as by `ip netns`).
const netnsDir = "/run/netns"

// Namespace is a named network namespace created by the harness. Work is
// done in it on a locked OS thread that is moved into the namespace and back;
// sockets and processes created there stay in it.
type Namespace struct {
	Name string
	h    netns.NsHandle
}

// NewNamespace creates the named namespace with its loopback up.
func NewNamespace(name string) (*Namespace, error) {
	var h netns.NsHandle
	err := onLockedThread(func() error {
		var err error
		h, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create network namespace %s: %w", name, err)
	}
	n := &Namespace{Name: name, h: h}
	if err := n.linkUp("lo"); err != nil {
		n.Delete()
		return nil, err
	}
	return n, nil
}

// onLockedThread runs fn on a locked OS thread and puts the thread back in
// the caller's namespace afterwards. If that fails, the thread stays locked
// and the runtime discards it when the goroutine ends, so no other goroutine
// ever runs in the wrong namespace.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get the thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Do runs fn on an OS thread inside the namespace.
func (n *Namespace) Do(fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(n.h); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", n.Name, err)
		}
		return fn()
	})
}

// Delete removes the namespace; processes still in it keep it alive until
// they end.
func (n *Namespace) Delete() error {
	n.h.Close()
	return netns.DeleteNamed(n.Name)
}

// Netlink returns a netlink handle bound to the namespace; close it after use.
func (n *Namespace) Netlink() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(n.h)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", n.Name, err)
	}
	return h, nil
}

func (n *Namespace) linkUp(name string) error {
	h, err := n.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s: link %s: %w", n.Name, name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: set %s up: %w", n.Name, name, err)
	}
	return nil
}

// EnableForwarding turns on IPv4 forwarding in this namespace only.
func (n *Namespace) EnableForwarding() error {
	return n.Do(func() error {
		// /proc/sys/net follows the opening thread's namespace.
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	})
}

// DialContext dials from inside the namespace.
func (n *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens inside the namespace.
func (n *Namespace) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// HTTPClient is a client whose connections are made inside the namespace;
// it follows no redirects and keeps no idle connections.
func (n *Namespace) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Start starts cmd inside the namespace. The child gets SIGKILL if the test
// process dies, so a crashed run leaves no agents behind.
func (n *Namespace) Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return n.Do(cmd.Start)
}

// Run runs cmd inside the namespace and returns its combined output.
func (n *Namespace) Run(cmd *exec.Cmd) ([]byte, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := n.Start(cmd); err != nil {
		return nil, err
	}
	err := cmd.Wait()
	return []byte(out.String()), err
}

// TempDir makes a temporary folder named like the namespaces, so Sweep
// finds it if the run crashes.
func TempDir(role string) (string, error) {
	return os.MkdirTemp("", fmt.Sprintf("%s%d-%s-", Prefix, os.Getpid(), role))
}

// Sweep removes what crashed or killed earlier runs left behind: namespaces
// named with Prefix whose creating process is gone (after killing any
// process still inside them) and their temporary folders. It is best effort
// and returns what it removed.
func Sweep() []string {
	var removed []string
	for _, name := range stale(netnsDir) {
		killProcessesIn(filepath.Join(netnsDir, name))
		if err := netns.DeleteNamed(name); err == nil || errors.Is(err, os.ErrNotExist) {
			removed = append(removed, filepath.Join(netnsDir, name))
		}
	}
	for _, name := range stale(os.TempDir()) {
		p := filepath.Join(os.TempDir(), name)
		if os.RemoveAll(p) == nil {
			removed = append(removed, p)
		}
	}
	return removed
}

// stale lists the entries of dir named Prefix + "<pid>-..." whose pid is
// not a live process.
func stale(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), Prefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		names = append(names, e.Name())
	}
	return names
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killProcessesIn kills the processes whose network namespace is the one
// bind-mounted at path (same device and inode).
func killProcessesIn(path string) {
	var want syscall.Stat_t
	if syscall.Stat(path, &want) != nil {
		return
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", p.Name(), "ns", "net"), &st) != nil {
			continue
		}
		if st.Ino == want.Ino && st.Dev == want.Dev {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
