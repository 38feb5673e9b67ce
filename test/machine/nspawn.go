//go:build linux

package machine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ContainerOptions configures BootContainer.
type ContainerOptions struct {
	// Name is the machine (and host) name.
	Name string
	// Lower is the read-only root file system (from Rootfs); the
	// container writes to an overlay on top of it.
	Lower string
	// Dir is a fresh work folder: overlay layers, the mount point, logs.
	Dir string
	// NetNS is the path of the network namespace the container joins
	// (e.g. /run/netns/x); empty means a private one with only loopback.
	NetNS string
	// Binds are extra systemd-nspawn arguments, whole, such as
	// "--bind-ro=/host/dir:/in/container".
	Binds []string
	// Prepare, if set, edits the root (Root path) before the boot.
	Prepare func(root string) error
}

// Container is a systemd-nspawn --boot container on an overlay of a cached
// root file system. Commands run inside it through nsenter into the
// namespaces of its PID 1, so no machined is needed.
type Container struct {
	Name string
	Root string // the merged root, as the container sees it
	Log  string // systemd-nspawn's output (the container's console)

	cmd  *exec.Cmd
	done chan struct{}
	err  error // set when done is closed
	pid1 int
}

// mountOverlay mounts an overlay of lower (read-only) at dir/root, writing
// to dir/upper, and returns dir/root.
func mountOverlay(lower, dir string) (root string, err error) {
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	root = filepath.Join(dir, "root")
	for _, d := range []string{upper, work, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := syscall.Mount("overlay", root, "overlay", 0, data); err != nil {
		return "", fmt.Errorf("mount an overlay of %s on %s: %w", lower, root, err)
	}
	return root, nil
}

func unmount(root string) error {
	var err error
	for range 50 {
		if err = syscall.Unmount(root, 0); err == nil || errors.Is(err, syscall.EINVAL) {
			return nil
		}
		time.Sleep(100 * time.Millisecond) // busy while the container's last processes exit
	}
	if err := syscall.Unmount(root, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: %w", root, err)
	}
	return nil
}

// NewRoot mounts an overlay of lower at dir/root for preparing a root
// before booting it; the returned function unmounts it.
func NewRoot(lower, dir string) (string, func() error, error) {
	root, err := mountOverlay(lower, dir)
	if err != nil {
		return "", nil, err
	}
	return root, func() error { return unmount(root) }, nil
}

// BootContainer mounts the overlay, runs opts.Prepare, boots the container
// and waits until systemd inside reports the boot finished (running or
// degraded), at most timeout. On error everything is torn down. Stop ends it.
func BootContainer(opts ContainerOptions, timeout time.Duration) (_ *Container, err error) {
	root, err := mountOverlay(opts.Lower, opts.Dir)
	if err != nil {
		return nil, err
	}
	c := &Container{Name: opts.Name, Root: root, Log: filepath.Join(opts.Dir, "console.log"),
		done: make(chan struct{})}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if err := os.WriteFile(filepath.Join(root, "etc", "hostname"), []byte(opts.Name+"\n"), 0o644); err != nil {
		return nil, err
	}
	if opts.Prepare != nil {
		if err := opts.Prepare(root); err != nil {
			return nil, fmt.Errorf("prepare %s: %w", opts.Name, err)
		}
	}
	args := []string{"--quiet", "--register=no", "--keep-unit", "--directory=" + root,
		"--machine=" + opts.Name, "--boot", "--console=passive"}
	if opts.NetNS != "" {
		// nspawn grants CAP_NET_ADMIN only with a network of its own
		// making; this namespace is the test's own, so grant it too.
		args = append(args, "--network-namespace-path="+opts.NetNS, "--capability=CAP_NET_ADMIN")
	} else {
		args = append(args, "--private-network")
	}
	args = append(args, opts.Binds...)
	logf, err := os.Create(c.Log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c.cmd = exec.Command("systemd-nspawn", args...)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_NSPAWN_TMPFS_TMP=0"}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		close(c.done)
		return nil, fmt.Errorf("start systemd-nspawn for %s: %w", opts.Name, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.waitPID1(ctx); err != nil {
		return nil, err
	}
	// is-system-running --wait blocks until the boot is over.
	var out []byte
	for {
		out, err = c.Run(ctx, "systemctl", "is-system-running", "--wait")
		state := strings.TrimSpace(string(out))
		if state == "running" || state == "degraded" {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s did not finish booting within %v: state %q (%v); console:\n%s",
				opts.Name, timeout, state, err, c.ConsoleTail(3000))
		}
		time.Sleep(200 * time.Millisecond) // the bus may not be up yet
	}
}

// waitPID1 finds the container's init: the descendant of systemd-nspawn
// that is PID 1 in its own PID namespace, running systemd.
func (c *Container) waitPID1(ctx context.Context) error {
	for {
		if pid := findPID1(c.cmd.Process.Pid); pid > 0 {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			if strings.TrimSpace(string(comm)) == "systemd" {
				c.pid1 = pid
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("systemd-nspawn for %s exited (%v); console:\n%s", c.Name, c.err, c.ConsoleTail(3000))
		case <-ctx.Done():
			return fmt.Errorf("no init in %s: %w", c.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// findPID1 walks the descendants of pid for one whose innermost PID is 1.
func findPID1(pid int) int {
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p != pid && nsPIDIsOne(p) {
			return p
		}
		queue = append(queue, children(p)...)
	}
	return 0
}

func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func nsPIDIsOne(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(rest)
			return len(f) > 1 && f[len(f)-1] == "1"
		}
	}
	return false
}

// Command is a command run inside the container (all its namespaces, a
// clean environment), for Run and for callers that need stdin.
func (c *Container) Command(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--target", strconv.Itoa(c.pid1), "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
		"--", "/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Run runs a command inside the container and returns its combined
// output; the error names the command and carries the output.
func (c *Container) Run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := c.Command(ctx, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("in %s: %s: %w: %s", c.Name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.Bytes(), nil
}

// Sh runs a shell script inside the container (sh -ec script).
func (c *Container) Sh(ctx context.Context, script string) ([]byte, error) {
	return c.Run(ctx, "/bin/sh", "-ec", script)
}

// Path is the host path of a path inside the container.
func (c *Container) Path(p string) string { return filepath.Join(c.Root, p) }

// ConsoleTail returns the last n bytes of the console log.
func (c *Container) ConsoleTail(n int) string {
	b, err := os.ReadFile(c.Log)
	if err != nil {
		return err.Error()
	}
	return tail(b, n)
}

// Stop powers the container off (SIGTERM to systemd-nspawn, which asks
// systemd inside to power off), kills it after 20 s, and unmounts the root.
// It is safe to call more than once.
func (c *Container) Stop() error {
	if c.cmd != nil && c.cmd.Process != nil {
		select {
		case <-c.done:
		default:
			c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.done:
			case <-time.After(20 * time.Second):
				syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
				if c.pid1 > 0 {
					syscall.Kill(c.pid1, syscall.SIGKILL)
				}
				<-c.done
			}
		}
	}
	if c.Root == "" {
		return nil
	}
	err := unmount(c.Root)
	if err == nil {
		c.Root = ""
	}
	return err
}
