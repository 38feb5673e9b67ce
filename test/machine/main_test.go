//go:build linux

package machine

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/e2e"
)

// The two versions the upgrade tests install, older first.
const (
	oldVersion = "1.0.0"
	newVersion = "1.1.0"
)

// workDir holds the binaries and packages of this run (removed by TestMain).
var workDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every machine test skips
	}
	if unmounted := SweepMounts(); len(unmounted) > 0 {
		fmt.Fprintf(os.Stderr, "machine: unmounted what crashed runs left: %s\n", strings.Join(unmounted, " "))
	}
	if removed := e2e.Sweep(); len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "machine: removed what crashed runs left: %s\n", strings.Join(removed, " "))
	}
	var err error
	if workDir, err = e2e.TempDir("machine"); err != nil {
		fmt.Fprintln(os.Stderr, "machine:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(workDir)
	os.Exit(code)
}

// fixture is what every machine test shares, built once per run: the
// cached root file system, and the binary and packages of two versions.
type fixture struct {
	Root       string // repository root
	Lower      string // the cached root file system
	OldBin     string
	Old, New   *Packages
	buildTimes string
}

var (
	fixtureOnce sync.Once
	fixtureVal  *fixture
	fixtureErr  error
)

// unitsRoot is where BuildPackages takes systemd/units from: the
// repository, or NODETRUST_TEST_UNITS_ROOT (to try other units).
func unitsRoot(repo string) string {
	if r := os.Getenv("NODETRUST_TEST_UNITS_ROOT"); r != "" {
		return r
	}
	return repo
}

// getFixture builds (once) or returns the shared fixture; it skips when
// not root or a tool is missing, and fails on build errors.
func getFixture(t *testing.T, tools ...string) *fixture {
	t.Helper()
	requireRoot(t)
	requireTools(t, append([]string{"debootstrap", "systemd-nspawn", "nsenter", "dpkg-deb"}, tools...)...)
	fixtureOnce.Do(func() { fixtureVal, fixtureErr = buildFixture(t) })
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return fixtureVal
}

func buildFixture(t *testing.T) (*fixture, error) {
	f := &fixture{}
	var err error
	if f.Root, err = ModuleRoot(); err != nil {
		return nil, err
	}
	var times []string
	// debootstrap waits on the mirror and the builds on the CPU: overlap them.
	type rootfsResult struct {
		dir   string
		built time.Duration
		err   error
	}
	rootfsc := make(chan rootfsResult, 1)
	go func() {
		dir, built, err := Rootfs(testLog{t})
		rootfsc <- rootfsResult{dir, built, err}
	}()
	start := time.Now()
	buildErr := func() error {
		for _, v := range []string{oldVersion, newVersion} {
			bin, err := BuildBinary(f.Root, workDir, v)
			if err != nil {
				return err
			}
			p, err := BuildPackages(unitsRoot(f.Root), bin, v, filepath.Join(workDir, "pkg-"+v))
			if err != nil {
				return err
			}
			if v == oldVersion {
				f.OldBin, f.Old = bin, p
			} else {
				f.New = p
			}
		}
		return nil
	}()
	built := time.Since(start)
	r := <-rootfsc
	if buildErr != nil {
		return nil, buildErr
	}
	if r.err != nil {
		return nil, r.err
	}
	f.Lower = r.dir
	if r.built > 0 {
		times = append(times, fmt.Sprintf("root file system built in %v", r.built.Round(time.Second)))
	}
	times = append(times, fmt.Sprintf("two binaries and their packages built in %v", built.Round(100*time.Millisecond)))
	f.buildTimes = strings.Join(times, "; ")
	t.Logf("machine fixture: %s", f.buildTimes)
	return f, nil
}
