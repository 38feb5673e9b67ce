//go:build linux

package machine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Kernel is a kernel and its initrd from the machine's linux-image package.
type Kernel struct {
	Version string // e.g. 6.1.0-56-amd64
	Image   string // /boot/vmlinuz-<version>
	Initrd  string // /boot/initrd.img-<version>
	Modules string // /lib/modules/<version>
}

// HostKernel finds the newest /boot/vmlinuz-* with an initrd and modules
// (linux-image-amd64 installs them; `make deps` installs that).
func HostKernel() (Kernel, error) {
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Sort(sort.Reverse(sort.StringSlice(images)))
	for _, img := range images {
		v := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		k := Kernel{Version: v, Image: img, Initrd: "/boot/initrd.img-" + v, Modules: "/lib/modules/" + v}
		if fileExists(k.Initrd) && fileExists(filepath.Join(k.Modules, "modules.dep")) {
			return k, nil
		}
	}
	return Kernel{}, errors.New("no /boot/vmlinuz-* with its initrd and /lib/modules: install linux-image-amd64 (make deps)")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// guestModules are the modules the guest loads from its own root (the
// initrd brings the disk drivers): the virtio network card.
var guestModules = []string{
	"kernel/drivers/net/virtio_net.ko",
	"kernel/drivers/net/net_failover.ko",
	"kernel/net/core/failover.ko",
}

// PrepareGuest makes root bootable by QEMU with k: the kernel's network
// modules and module index, /etc/fstab for /dev/vda, DHCP on eth0, the
// hostname.
func PrepareGuest(root string, k Kernel, hostname string) error {
	dst := filepath.Join(root, "lib", "modules", k.Version)
	var files []string
	for _, m := range guestModules {
		// Debian may ship them compressed.
		matches, _ := filepath.Glob(filepath.Join(k.Modules, m+"*"))
		files = append(files, matches...)
	}
	idx, _ := filepath.Glob(filepath.Join(k.Modules, "modules.*"))
	files = append(files, idx...)
	if len(files) == len(idx) {
		return fmt.Errorf("no virtio_net module under %s", k.Modules)
	}
	for _, f := range files {
		rel, _ := filepath.Rel(k.Modules, f)
		if err := copyFile(f, filepath.Join(dst, rel), 0o644); err != nil {
			return err
		}
	}
	writes := map[string]string{
		"etc/fstab":                     "/dev/vda / ext4 rw,relatime 0 1\n",
		"etc/network/interfaces.d/eth0": "auto eth0\niface eth0 inet dhcp\n",
		"etc/hostname":                  hostname + "\n",
		"etc/hosts":                     "127.0.0.1 localhost\n127.0.1.1 " + hostname + "\n",
	}
	for p, content := range writes {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// MakeImage writes root as a fresh ext4 image of size (e.g. "1G") with
// mke2fs -d: no loop device, no mount.
func MakeImage(root, image, size string) error {
	out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-d", root, image, size).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mke2fs -d %s %s: %w: %s", root, image, err, out)
	}
	return nil
}

// VMOptions configures RunVM.
type VMOptions struct {
	Kernel  Kernel
	Image   string // root disk, /dev/vda (raw; QEMU writes to a snapshot)
	Results string // results disk, /dev/vdb (raw, written by the guest)
	Console string // serial console log
	// Netdev is the -netdev user,... argument (id n0).
	Netdev string
	// MemoryMB and CPUs default to 1024 and 1: one TCG vCPU boots as fast
	// as two on the project's 2-core machines (measured: 29 s to power-off
	// either way) and leaves a core to the test packages running beside.
	MemoryMB, CPUs int
	// Start starts the qemu command (e.g. inside a network namespace);
	// nil means cmd.Start.
	Start func(cmd *exec.Cmd) error
}

// RunVM boots the guest with QEMU (TCG: KVM is not usable on the project's
// machines) and waits until it powers off, at most timeout; on timeout or
// ctx's end QEMU is killed and an error returned with the console's tail.
func RunVM(ctx context.Context, opts VMOptions, timeout time.Duration) (time.Duration, error) {
	if opts.MemoryMB == 0 {
		opts.MemoryMB = 1024
	}
	if opts.CPUs == 0 {
		opts.CPUs = 1
	}
	args := []string{
		"-accel", "tcg", "-m", fmt.Sprint(opts.MemoryMB), "-smp", fmt.Sprint(opts.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
		"-serial", "file:" + opts.Console,
		"-kernel", opts.Kernel.Image, "-initrd", opts.Kernel.Initrd,
		"-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 systemd.show_status=0",
		"-drive", "file=" + opts.Image + ",if=virtio,format=raw,snapshot=on",
		"-drive", "file=" + opts.Results + ",if=virtio,format=raw",
		"-netdev", opts.Netdev, "-device", "virtio-net-pci,netdev=n0",
		"-device", "virtio-rng-pci",
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.Command("qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	start := time.Now()
	var err error
	if opts.Start != nil {
		err = opts.Start(cmd)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return 0, fmt.Errorf("start qemu-system-x86_64: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// The group: QEMU and the nc processes its guestfwd spawned.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return time.Since(start), fmt.Errorf("the VM did not power off within %v (killed); console:\n%s",
			timeout, fileTail(opts.Console, 4000))
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // leftover guestfwd helpers
	if err != nil {
		return time.Since(start), fmt.Errorf("qemu-system-x86_64: %w: %s; console:\n%s", err,
			strings.TrimSpace(stderr.String()), fileTail(opts.Console, 4000))
	}
	return time.Since(start), nil
}

// ReadResults returns what the guest wrote to the results disk (up to the
// first NUL byte).
func ReadResults(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b), nil
}

func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tail(b, n)
}
