package systemd_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The packages ship these files from here (packaging/ reads systemd/units,
// sysusers.d and tmpfiles.d): keep the names stable.
var (
	units = []string{"nodetrust-agent.service", "nodetrust-online.target", "nodetrust-metadata.service", "nodetrust-metadata.socket",
		"nodetrust-controlplane.service", "nodetrust-signer.service"}
	services = []string{"nodetrust-agent.service", "nodetrust-metadata.service", "nodetrust-controlplane.service", "nodetrust-signer.service"}
)

// maxExposure is the highest `systemd-analyze security` exposure a
// long-running service may have.
const maxExposure = 2.0

func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s not installed (apt-get install systemd): %v", tool, err)
	}
	return p
}

// unitCopies writes the units into a temporary folder with ExecStart and
// ExecReload pointing at an executable that exists here (verify checks
// that), and returns the folder.
func unitCopies(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	dir := t.TempDir()
	for _, u := range units {
		b, err := os.ReadFile(filepath.Join("units", u))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, u), []byte(strings.ReplaceAll(string(b), "/usr/bin/nodetrust", exe)), 0o644))
	}
	return dir
}

func TestUnitsVerify(t *testing.T) {
	tool := need(t, "systemd-analyze")
	dir := unitCopies(t)
	for _, u := range units {
		t.Run(u, func(t *testing.T) {
			cmd := exec.Command(tool, "verify", filepath.Join(dir, u))
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "systemd-analyze verify %s:\n%s", u, out)
			assert.Empty(t, strings.TrimSpace(string(out)), "warnings from systemd-analyze verify")
		})
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: (\d+\.\d+)`)

func TestServicesExposure(t *testing.T) {
	tool := need(t, "systemd-analyze")
	dir := unitCopies(t)
	for _, u := range services {
		t.Run(u, func(t *testing.T) {
			out, err := exec.Command(tool, "security", "--offline=yes", "--no-pager", filepath.Join(dir, u)).CombinedOutput()
			require.NoError(t, err, "%s", out)
			m := exposureRE.FindSubmatch(out)
			require.NotNil(t, m, "no exposure level in:\n%s", out)
			score, err := strconv.ParseFloat(string(m[1]), 64)
			require.NoError(t, err)
			t.Logf("%s: exposure %.1f", u, score)
			assert.LessOrEqual(t, score, maxExposure, "systemd-analyze security --offline=yes %s:\n%s", u, out)
		})
	}
}

// directives returns the values of key in a unit file.
func directives(t *testing.T, unit, key string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("units", unit))
	require.NoError(t, err)
	defer f.Close()
	var vals []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), key+"="); ok {
			vals = append(vals, v)
		}
	}
	return vals
}

func TestAgentUnitDirectives(t *testing.T) {
	const u = "nodetrust-agent.service"
	for key, want := range map[string]string{
		"Type":                    "notify",
		"NotifyAccess":            "main",
		"ExecStart":               "/usr/bin/nodetrust agent --config /etc/nodetrust/agent.yaml",
		"ExecReload":              "/usr/bin/nodetrust agent reload --pid $MAINPID",
		"WatchdogSec":             "30",
		"Restart":                 "on-failure",
		"RestartSec":              "2",
		"User":                    "nodetrust",
		"StateDirectory":          "nodetrust",
		"AmbientCapabilities":     "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet":   "CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
		"Wants":                   "network-online.target",
		"After":                   "network-online.target",
	} {
		assert.Equal(t, []string{want}, directives(t, u, key), key)
	}
	assert.Contains(t, directives(t, u, "SystemCallFilter"), "@system-service")
	for _, key := range []string{"StartLimitIntervalSec", "StartLimitBurst", "TimeoutStartSec", "TimeoutStopSec", "RuntimeDirectory", "ConfigurationDirectory"} {
		assert.Len(t, directives(t, u, key), 1, key)
	}
	for _, svc := range services {
		for _, v := range directives(t, svc, "RestartPreventExitStatus") {
			assert.NotContains(t, strings.Fields(v), "2", "%s: a watchdog kill (SIGABRT) makes Go exit 2; it must restart", svc)
		}
	}
	assert.Equal(t, []string{"yes"}, directives(t, "nodetrust-metadata.socket", "FreeBind"))
	assert.Equal(t, []string{"metadata"}, directives(t, "nodetrust-metadata.socket", "FileDescriptorName"))
}

// TestUsersAndDataFolder creates the users with systemd-sysusers and the
// control-plane folder's ownership with systemd-tmpfiles in a scratch
// root, and checks who can read what.
func TestUsersAndDataFolder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: systemd-tmpfiles changes owners")
	}
	sysusers := need(t, "systemd-sysusers")
	tmpfiles := need(t, "systemd-tmpfiles")
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	confs, err := filepath.Glob("sysusers.d/*.conf")
	require.NoError(t, err)
	for _, c := range confs {
		abs, _ := filepath.Abs(c)
		out, err := exec.Command(sysusers, "--root="+root, abs).CombinedOutput()
		require.NoError(t, err, "%s: %s", c, out)
	}
	passwd, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	require.NoError(t, err)
	uid := map[string]int{}
	for _, l := range strings.Split(string(passwd), "\n") {
		if f := strings.Split(l, ":"); len(f) > 3 {
			uid[f[0]], _ = strconv.Atoi(f[2])
		}
	}
	for _, u := range services {
		for _, user := range directives(t, u, "User") {
			assert.Contains(t, uid, user, "%s runs as %s, which no sysusers.d file creates", u, user)
		}
	}
	group, err := os.ReadFile(filepath.Join(root, "etc/group"))
	require.NoError(t, err)
	assert.Regexp(t, `(?m)^nodetrust-cp:x:\d+:nodetrust-signer$`, string(group), "the signer is in the API's group (socket access)")

	// A data folder as 'controlplane init' leaves it: root's, 0700.
	data := filepath.Join(root, "var/lib/nodetrust-cp")
	for _, d := range []string{"pki", "signer", "etcd", "store", "run"} {
		require.NoError(t, os.MkdirAll(filepath.Join(data, d), 0o700))
	}
	files := map[string]os.FileMode{"pki/ca.crt": 0o644, "pki/apiserver.key": 0o600, "signer/ca.key": 0o600, "admin.kubeconfig": 0o600, "store/x": 0o600}
	for f, m := range files {
		require.NoError(t, os.WriteFile(filepath.Join(data, f), []byte("x"), m))
	}
	require.NoError(t, os.Chmod(data, 0o700))
	conf, _ := filepath.Abs("tmpfiles.d/nodetrust-server.conf")
	out, err := exec.Command(tmpfiles, "--root="+root, "--create", conf).CombinedOutput()
	require.NoError(t, err, "%s", out)

	owner := func(p string) (int, int, os.FileMode) {
		fi, err := os.Lstat(filepath.Join(data, p))
		require.NoError(t, err)
		st := fi.Sys().(*syscallStat)
		return int(st.Uid), int(st.Gid), fi.Mode()
	}
	cp, signer := uid["nodetrust-cp"], uid["nodetrust-signer"]
	tests := []struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}{
		{".", 0, cp, os.ModeDir | os.ModeSticky | 0o770},
		{"admin.kubeconfig", cp, cp, 0o600},
		{"pki", cp, cp, os.ModeDir | 0o750},
		{"pki/ca.crt", cp, cp, 0o644},
		{"pki/apiserver.key", cp, cp, 0o600},
		{"store/x", cp, cp, 0o600},
		{"signer", signer, cp, os.ModeDir | 0o700},
		{"signer/ca.key", signer, cp, 0o600},
	}
	for _, tt := range tests {
		u, g, m := owner(tt.path)
		assert.Equal(t, []any{tt.uid, tt.gid, tt.mode}, []any{u, g, m}, tt.path)
	}
}
