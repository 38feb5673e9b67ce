//go:build linux

package machine

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: machine tests boot containers and VMs")
	}
}

// requireTools skips when a tool is missing (`make deps` installs them all).
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		t.Skipf("missing %s: run `make deps` as root", strings.Join(missing, ", "))
	}
}

// testLog writes lines to the test log.
type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
