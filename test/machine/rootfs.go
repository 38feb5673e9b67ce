//go:build linux

package machine

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Suite is the Debian release of the machines.
const Suite = "bookworm"

// RootfsPackages are installed into the minbase root file system besides
// the essential set: a booting systemd, the network tools the VM needs, and
// adduser for maintainer scripts that create users.
var RootfsPackages = []string{
	"systemd", "systemd-sysv", "udev", "dbus", "iproute2", "curl", "ca-certificates",
	"netbase", "ifupdown", "isc-dhcp-client", "adduser",
}

// rootfsFormat changes when the build steps after debootstrap change, so
// older caches are not reused.
const rootfsFormat = "1"

// CacheDir holds the cached root file systems. NODETRUST_TEST_CACHE
// overrides it.
func CacheDir() string {
	if d := os.Getenv("NODETRUST_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/nodetrust-test"
}

// RootfsKey names the cached root file system of the current package list.
func RootfsKey() string {
	h := sha256.Sum256([]byte(rootfsFormat + "\n" + Suite + "\n" + strings.Join(RootfsPackages, ",")))
	return Suite + "-" + hex.EncodeToString(h[:6])
}

// Rootfs returns the directory of the cached Debian root file system,
// building it first when it is missing. The build runs under an exclusive
// lock (two test processes never build at once; the second waits and reuses
// the result), in a temporary directory renamed into place at the end, so
// an interrupted build never leaves a half cache. Callers must not write to
// the returned directory: use it as the lower layer of an overlay.
// built reports whether this call built it, and took how long.
func Rootfs(logw io.Writer) (dir string, built time.Duration, err error) {
	cache := CacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", 0, fmt.Errorf("rootfs cache %s: %w", cache, err)
	}
	key := RootfsKey()
	dir = filepath.Join(cache, key)
	if ok, _ := isBuilt(dir); ok {
		return dir, 0, nil
	}
	lock, err := os.OpenFile(filepath.Join(cache, key+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("rootfs lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", 0, fmt.Errorf("rootfs lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if ok, _ := isBuilt(dir); ok {
		return dir, 0, nil // another process built it while we waited
	}
	start := time.Now()
	if err := buildRootfs(dir, logw); err != nil {
		return "", 0, err
	}
	return dir, time.Since(start), nil
}

// isBuilt reports whether dir is a complete cache entry (the rename is the
// last step, so existing is enough; the marker guards against hand-made dirs).
func isBuilt(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, "etc", "nodetrust-test-rootfs"))
	return err == nil, err
}

func buildRootfs(dir string, logw io.Writer) error {
	mirror, err := DebianMirror()
	if err != nil {
		return err
	}
	// Only the lock holder builds, so leftovers of interrupted builds can go.
	olds, _ := filepath.Glob(dir + ".tmp-*")
	for _, o := range olds {
		os.RemoveAll(o)
	}
	os.RemoveAll(dir) // a directory without the marker is not a cache entry
	tmp := fmt.Sprintf("%s.tmp-%d", dir, os.Getpid())
	fmt.Fprintf(logw, "machine: building the %s root file system in %s from %s (about 2.5 min)\n", Suite, dir, mirror)
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(RootfsPackages, ","),
		Suite, tmp, mirror)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // the next build clears its folder
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("debootstrap %s into %s from %s: %w\n%s", Suite, tmp, mirror, err, tail(out, 4096))
	}
	if err := finishRootfs(tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("rootfs: move %s into place: %w", tmp, err)
	}
	return nil
}

// finishRootfs makes the fresh root bootable by both tiers: no root
// password (console login when debugging), no downloaded .debs, a marker.
func finishRootfs(root string) error {
	if b, err := os.ReadFile(filepath.Join(root, "etc", "shadow")); err == nil {
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "root:") {
				f := strings.Split(l, ":")
				f[1] = ""
				lines[i] = strings.Join(f, ":")
			}
		}
		if err := os.WriteFile(filepath.Join(root, "etc", "shadow"), []byte(strings.Join(lines, "\n")), 0o640); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(root, "var", "cache", "apt", "archives", "*.deb"))
	for _, d := range debs {
		os.Remove(d)
	}
	marker := fmt.Sprintf("suite=%s\npackages=%s\nbuilt=%s\n", Suite, strings.Join(RootfsPackages, ","), time.Now().UTC().Format(time.RFC3339))
	if err := os.WriteFile(filepath.Join(root, "etc", "nodetrust-test-rootfs"), []byte(marker), 0o644); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return nil
}

// DebianMirror is the machine's own Debian mirror for Suite, read from
// /etc/apt/sources.list and sources.list.d (one-line and deb822 formats).
// NODETRUST_TEST_MIRROR overrides it.
func DebianMirror() (string, error) {
	if m := os.Getenv("NODETRUST_TEST_MIRROR"); m != "" {
		return m, nil
	}
	files := []string{"/etc/apt/sources.list"}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append(files, more...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var m string
		if strings.HasSuffix(f, ".sources") {
			m = mirrorDeb822(string(b))
		} else {
			m = mirrorOneLine(string(b))
		}
		if m != "" {
			return m, nil
		}
	}
	return "", fmt.Errorf("no Debian %s mirror in /etc/apt/sources.list*: set NODETRUST_TEST_MIRROR to one", Suite)
}

// mirrorOneLine finds "deb [options] URI bookworm main ...".
func mirrorOneLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) >= 3 && f[1] == Suite && slices.Contains(f[2:], "main") {
			return f[0]
		}
	}
	return ""
}

// mirrorDeb822 finds a stanza with Types: deb, Suites: bookworm, Components: main.
func mirrorDeb822(s string) string {
	for _, stanza := range strings.Split(s, "\n\n") {
		fields := map[string][]string{}
		for _, l := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "#") {
				continue
			}
			k, v, ok := strings.Cut(l, ":")
			if !ok {
				continue
			}
			fields[strings.ToLower(strings.TrimSpace(k))] = strings.Fields(v)
		}
		if slices.Contains(fields["types"], "deb") && slices.Contains(fields["suites"], Suite) &&
			slices.Contains(fields["components"], "main") && len(fields["uris"]) > 0 {
			return fields["uris"][0]
		}
	}
	return ""
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
