//go:build linux

package machine

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rpmQuery runs rpm -qp --qf format on a package file on the host.
func rpmQuery(t *testing.T, path, format string) string {
	t.Helper()
	out, err := exec.Command("rpm", "-qp", "--qf", format, path).CombinedOutput()
	require.NoError(t, err, "rpm -qp --qf %q %s: %s", format, path, out)
	return string(out)
}

// scriptlet is one scriptlet of an rpm: its interpreter and body.
type scriptlet struct{ Prog, Body string }

func rpmScriptlet(t *testing.T, path, tag string) scriptlet {
	t.Helper()
	s := scriptlet{Prog: rpmQuery(t, path, "%{"+tag+"PROG}"), Body: rpmQuery(t, path, "%{"+tag+"}")}
	require.NotEqual(t, "(none)", s.Body, "%s has no %%%s scriptlet", path, strings.ToLower(tag))
	require.Equal(t, "/bin/sh", s.Prog, "%s %%%s interpreter", path, strings.ToLower(tag))
	return s
}

// run runs the scriptlet inside the container with arg as $1, as rpm does.
func (s scriptlet) run(t *testing.T, ct *Container, name string, arg int) {
	t.Helper()
	cmd := ct.Command(ctxT(t, 60*time.Second), s.Prog, "-s", "--", fmt.Sprint(arg))
	cmd.Stdin = strings.NewReader(s.Body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), "%s %d in %s: %s", name, arg, ct.Name, out.String())
}

// TestRPMPackages checks the rpm files (contents, flags, requires,
// scriptlets) and runs the agent's scriptlets with their upgrade (2, then
// the old package's 1) and erase (0) arguments inside a booted container
// where the service runs, asserting their effects.
func TestRPMPackages(t *testing.T) {
	f := getFixture(t, "rpm")
	agentOld, agentNew := f.Old.Path("nodetrust-agent", "rpm"), f.New.Path("nodetrust-agent", "rpm")
	common := f.Old.Path("nodetrust", "rpm")
	require.NotEmpty(t, agentOld)
	require.NotEmpty(t, common)

	t.Run("contents", func(t *testing.T) {
		files := rpmQuery(t, agentOld, "[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}\n]")
		assert.Contains(t, files, agentConf+" cn -rw-r--r-- root\n", "agent.yaml must be %%config(noreplace)")
		assert.Contains(t, files, "/usr/lib/systemd/system/"+agentUnit+" ")
		assert.Contains(t, files, agentState+"  drwxr-x--- nodetrust\n", "the rpm owns the state folder (SELinux labels)")
		assert.Contains(t, rpmQuery(t, agentOld, "[%{REQUIRENAME} %{REQUIREFLAGS:depflags} %{REQUIREVERSION}\n]"),
			"nodetrust = "+oldVersion+"-1\n")
		bin := rpmQuery(t, common, "[%{FILENAMES} %{FILEMODES:perms}\n]")
		assert.Contains(t, bin, "/usr/bin/nodetrust -rwxr-xr-x\n")
		for _, tag := range []string{"POSTIN", "PREUN", "POSTUN"} {
			rpmScriptlet(t, agentOld, tag)
		}
	})

	c := startCluster(t, f)
	ct := bootNode(t, f, c, "nt-rpm")
	step := func(name string, fn func(t *testing.T)) {
		if !t.Run(name, fn) {
			t.FailNow()
		}
	}
	// rpm itself (on the host, --root, --noscripts) lays the payload down;
	// the scriptlets run inside the booted machine, in rpm's order.
	rpmRoot := func(t *testing.T, args ...string) {
		t.Helper()
		full := append([]string{"--root", ct.Root, "--nodeps", "--noscripts"}, args...)
		out, err := exec.Command("rpm", full...).CombinedOutput()
		require.NoError(t, err, "rpm %s: %s", strings.Join(full, " "), out)
	}
	var pid string
	step("install: %pre 1, payload, %post 1 create the users and preset the unit", func(t *testing.T) {
		// The common package creates the users in %pre or %post.
		hasPre, hasPost := rpmQuery(t, common, "%{PREIN}") != "(none)", rpmQuery(t, common, "%{POSTIN}") != "(none)"
		require.True(t, hasPre || hasPost, "%s has neither %%pre nor %%post: who creates the nodetrust user?", common)
		if hasPre {
			rpmScriptlet(t, common, "PREIN").run(t, ct, "nodetrust %pre", 1)
		}
		rpmRoot(t, "-i", common, agentOld)
		if hasPost {
			rpmScriptlet(t, common, "POSTIN").run(t, ct, "nodetrust %post", 1)
		}
		uid, _ := userIDs(t, ct, "nodetrust")
		rpmScriptlet(t, agentOld, "POSTIN").run(t, ct, "nodetrust-agent %post", 1)
		assert.Equal(t, "enabled", isEnabled(t, ct, agentUnit), "%%post 1 must enable the unit by preset")
		assert.Equal(t, "inactive", show(t, ct, agentUnit, "ActiveState")["ActiveState"], "%%post 1 must not start an unconfigured agent")
		fi, err := os.Stat(ct.Path(agentState))
		require.NoError(t, err)
		assert.Equal(t, uid, int(fi.Sys().(*syscall.Stat_t).Uid), "%s owner", agentState)
	})
	step("configured agent starts", func(t *testing.T) {
		require.NoError(t, appendFile(ct.Path(agentConf), adminConfig()))
		_, err := ct.Run(ctxT(t, 90*time.Second), "systemctl", "start", agentUnit)
		require.NoError(t, err)
		pid = show(t, ct, agentUnit, "MainPID")["MainPID"]
	})
	step("upgrade: payload, new %post 2, old %preun 1, old %postun 1 reload systemd and restart", func(t *testing.T) {
		conf, err := os.ReadFile(ct.Path(agentConf))
		require.NoError(t, err)
		rpmRoot(t, "-U", f.New.Path("nodetrust", "rpm"), agentNew)
		after, err := os.ReadFile(ct.Path(agentConf))
		require.NoError(t, err)
		assert.Equal(t, string(conf), string(after), "%%config(noreplace) keeps the edited %s", agentConf)
		// A changed unit file (as an upgrade may ship) systemd has not loaded.
		unitPath := ct.Path("/usr/lib/systemd/system/" + agentUnit)
		unit, err := os.ReadFile(unitPath)
		require.NoError(t, err)
		changed := strings.Replace(string(unit), "[Service]\n", "[Service]\nEnvironment=NODETRUST_TEST_UPGRADED=1\n", 1)
		require.NoError(t, os.WriteFile(unitPath, []byte(changed), 0o644))
		require.Equal(t, "yes", show(t, ct, agentUnit, "NeedDaemonReload")["NeedDaemonReload"])

		rpmScriptlet(t, agentNew, "POSTIN").run(t, ct, "nodetrust-agent (new) %post", 2)
		rpmScriptlet(t, agentOld, "PREUN").run(t, ct, "nodetrust-agent (old) %preun", 1)
		assert.Equal(t, pid, show(t, ct, agentUnit, "MainPID")["MainPID"], "%%preun 1 must leave the agent running")
		rpmScriptlet(t, agentOld, "POSTUN").run(t, ct, "nodetrust-agent (old) %postun", 1)
		p := show(t, ct, agentUnit, "NeedDaemonReload", "ActiveState", "MainPID", "Environment")
		assert.Equal(t, "no", p["NeedDaemonReload"], "%%postun must daemon-reload")
		assert.Equal(t, "active", p["ActiveState"])
		assert.NotEqual(t, pid, p["MainPID"], "%%postun 1 must try-restart the running agent")
		assert.Contains(t, p["Environment"], "NODETRUST_TEST_UPGRADED=1")
		assert.Equal(t, "enabled", isEnabled(t, ct, agentUnit))
		out, err := ct.Run(ctxT(t, 10*time.Second), "nodetrust", "version")
		require.NoError(t, err)
		assert.Contains(t, string(out), newVersion)
	})
	step("erase: %preun 0 disables and stops, %postun 0 keeps the state", func(t *testing.T) {
		conf, err := os.ReadFile(ct.Path(agentConf))
		require.NoError(t, err)
		rpmScriptlet(t, agentNew, "PREUN").run(t, ct, "nodetrust-agent %preun", 0)
		assert.Equal(t, "disabled", isEnabled(t, ct, agentUnit))
		assert.Equal(t, "inactive", show(t, ct, agentUnit, "ActiveState")["ActiveState"])
		rpmRoot(t, "-e", "nodetrust-agent")
		rpmScriptlet(t, agentNew, "POSTUN").run(t, ct, "nodetrust-agent %postun", 0)
		_, err = os.Lstat(ct.Path(agentState + "/pki/kubelet-client-current.pem"))
		assert.NoError(t, err, "the state must survive an rpm erase")
		saved, err := os.ReadFile(ct.Path(agentConf + ".rpmsave"))
		require.NoError(t, err, "rpm -e saves the edited config as .rpmsave")
		assert.Equal(t, string(conf), string(saved))
		assert.Equal(t, "no", show(t, ct, agentUnit, "NeedDaemonReload")["NeedDaemonReload"])
	})
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
