package packaging

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLintian(t *testing.T) {
	needTool(t, "lintian")
	pkgs := packages(t)
	args := []string{"--fail-on", "error,warning", "--tag-display-limit", "0"}
	for _, p := range []string{CommonPackage, AgentPackage, ServerPackage} {
		args = append(args, pkgs[p+" deb"])
	}
	out, err := exec.Command("lintian", args...).CombinedOutput()
	assert.NoError(t, err, "lintian:\n%s", out)
	for _, line := range strings.Split(string(out), "\n") {
		assert.False(t, strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "W: "), line)
	}
}

func TestRpmlint(t *testing.T) {
	needTool(t, "rpmlint")
	pkgs := packages(t)
	args := []string{"-c", "rpmlint.toml"}
	for _, p := range []string{CommonPackage, AgentPackage, ServerPackage} {
		args = append(args, pkgs[p+" rpm"])
	}
	out, err := exec.Command("rpmlint", args...).CombinedOutput()
	assert.NoError(t, err, "rpmlint:\n%s", out)
	assert.Contains(t, string(out), "0 errors, 0 warnings")
}

func TestRealUnits(t *testing.T) {
	units, err := findUnits(filepath.Join("..", "systemd", "units"), false)
	if err != nil {
		t.Skipf("systemd/units not complete yet, built from testdata only: %v", err)
	}
	packages(t) // the stand-in binary
	out := t.TempDir()
	arts, err := Build(Options{Root: "..", Binary: filepath.Join(builtDir, "nodetrust"), Version: "1.2.3", OutDir: out, Epoch: testEpoch})
	if errors.Is(err, ErrUndeclaredUser) {
		t.Skipf("systemd/sysusers.d not complete yet, built from testdata only: %v", err)
	}
	require.NoError(t, err)
	require.Len(t, arts, 6)

	if _, err := exec.LookPath("dpkg-deb"); err == nil {
		var all strings.Builder
		for _, a := range arts {
			if a.Format == "deb" {
				all.WriteString(run(t, "dpkg-deb", "-c", a.Path))
			}
		}
		for _, us := range units {
			for _, u := range us {
				assert.Contains(t, all.String(), "./usr/lib/systemd/system/"+u.Name+"\n")
			}
		}
	}
	var debs, rpms []string
	for _, a := range arts {
		if a.Format == "deb" {
			debs = append(debs, a.Path)
		} else {
			rpms = append(rpms, a.Path)
		}
	}
	if _, err := exec.LookPath("lintian"); err == nil {
		out, err := exec.Command("lintian", append([]string{"--fail-on", "error,warning", "--tag-display-limit", "0"}, debs...)...).CombinedOutput()
		assert.NoError(t, err, "lintian:\n%s", out)
	}
	if _, err := exec.LookPath("rpmlint"); err == nil {
		out, err := exec.Command("rpmlint", append([]string{"-c", "rpmlint.toml"}, rpms...)...).CombinedOutput()
		assert.NoError(t, err, "rpmlint:\n%s", out)
	}
}
