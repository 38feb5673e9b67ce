//go:build linux

package machine

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/nodetrust/nodetrust/test/e2e"
)

// SweepMounts unmounts the overlays that crashed runs left under their
// temporary folders (named like e2e.TempDir's, with a pid that is gone),
// so e2e.Sweep can remove the folders. It returns what it unmounted.
func SweepMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	prefix := filepath.Join(os.TempDir(), e2e.Prefix)
	var stale []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := fields[4]
		rest, ok := strings.CutPrefix(mp, prefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		stale = append(stale, mp)
	}
	var done []string
	for i := len(stale) - 1; i >= 0; i-- { // innermost first
		if syscall.Unmount(stale[i], syscall.MNT_DETACH) == nil {
			done = append(done, stale[i])
		}
	}
	return done
}
