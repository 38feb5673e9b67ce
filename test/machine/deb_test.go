//go:build linux

package machine

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
)

// TestNspawnDebLifecycle installs, configures, reloads, upgrades, removes
// and purges the agent's .deb in one booted container joined to a node
// namespace of a real cluster, checking the service and its files after
// each step from inside the machine.
func TestNspawnDebLifecycle(t *testing.T) {
	f := getFixture(t)
	c := startCluster(t, f)
	ct := bootNode(t, f, c, "nt-deb")
	node := c.Nodes[0]
	var firstPID, serial, certFile string
	// currentCert is the dated file the current-certificate link points
	// at: a new bootstrap would make a new one.
	currentCert := func(t *testing.T) string {
		target, err := os.Readlink(ct.Path(agentState + "/pki/kubelet-client-current.pem"))
		require.NoError(t, err)
		return target
	}

	step := func(name string, fn func(t *testing.T)) {
		if !t.Run(name, fn) {
			t.FailNow()
		}
	}
	step("install enables but does not start", func(t *testing.T) {
		dpkgInstall(t, ct, f.Old, "old", "nodetrust", "nodetrust-agent")
		p := show(t, ct, agentUnit, "ActiveState")
		assert.Equal(t, "enabled", isEnabled(t, ct, agentUnit))
		assert.Equal(t, "inactive", p["ActiveState"], "not configured yet, so not started")
		userIDs(t, ct, "nodetrust") // the common package created the user
		// Started by hand (or at boot) before it is configured: skipped, not failed.
		_, err := ct.Run(ctxT(t, 60*time.Second), "systemctl", "start", agentUnit)
		require.NoError(t, err, "start of an unconfigured agent")
		p = show(t, ct, agentUnit, "ActiveState", "Result")
		assert.Equal(t, "inactive", p["ActiveState"], "an unconfigured agent must not run or fail")
		assert.Equal(t, "success", p["Result"])
	})
	step("configured agent starts and reaches READY", func(t *testing.T) {
		require.NoError(t, appendFile(ct.Path(agentConf), adminConfig()))
		start := time.Now()
		// Type=notify: start returns once the agent sent READY=1, which it
		// does with valid credentials and its tunnels up.
		_, err := ct.Run(ctxT(t, 90*time.Second), "systemctl", "start", agentUnit)
		require.NoError(t, err)
		t.Logf("systemctl start returned after %v", time.Since(start).Round(time.Millisecond))
		p := show(t, ct, agentUnit, "ActiveState", "SubState", "MainPID", "Type", "User")
		assert.Equal(t, "active", p["ActiveState"])
		assert.Equal(t, "running", p["SubState"])
		assert.Equal(t, "notify", p["Type"])
		assert.Equal(t, "nodetrust", p["User"])
		firstPID = p["MainPID"]
		// Non-root with exactly CAP_NET_ADMIN and CAP_NET_BIND_SERVICE.
		procStatus, err := ct.Run(ctxT(t, 10*time.Second), "cat", "/proc/"+firstPID+"/status")
		require.NoError(t, err)
		for _, want := range []string{"CapEff:\t0000000000001400", "CapAmb:\t0000000000001400"} {
			assert.Contains(t, string(procStatus), want)
		}
		assert.NotContains(t, string(procStatus), "Uid:\t0\t", "the agent must not run as root")
		// READY means certified: the credentials are there at once.
		_, err = os.Stat(ct.Path(agentState + "/pki/kubelet-client-current.pem"))
		require.NoError(t, err, "client certificate right after READY")
		var cr agent.CredentialStatus
		eventually(t, 10*time.Second, "status healthy", func() (err error) {
			cr, err = clientCert(ct)
			return err
		})
		serial = cr.Serial
		certFile = currentCert(t)
		assert.Equal(t, "CN=system:node:node-a,O=system:nodes", cr.Subject)
		// ... and the tunnel is up: the metadata host reaches node-a's
		// kubelet port through it.
		eventually(t, 20*time.Second, "kubelet through the tunnel", func() error {
			_, err := c.GetThroughTunnel(node.Name+":10250", "/healthz")
			return err
		})
	})
	step("credentials belong to the nodetrust user, keys 0600", func(t *testing.T) {
		uid, _ := userIDs(t, ct, "nodetrust")
		checkStateOwnership(t, ct.Path(agentState), uid)
	})
	step("reload returns after READY", func(t *testing.T) {
		start := time.Now()
		_, err := ct.Run(ctxT(t, 60*time.Second), "systemctl", "reload", agentUnit)
		require.NoError(t, err)
		t.Logf("systemctl reload returned after %v", time.Since(start).Round(time.Millisecond))
		p := show(t, ct, agentUnit, "ActiveState", "SubState", "MainPID", "NRestarts")
		assert.Equal(t, "active", p["ActiveState"], "reload returned while the unit was %s", p["ActiveState"])
		assert.Equal(t, "running", p["SubState"])
		assert.Equal(t, firstPID, p["MainPID"], "reload must not restart the agent")
		assert.Equal(t, "0", p["NRestarts"])

		// A rejected file: reload fails, the agent runs on.
		good, err := os.ReadFile(ct.Path(agentConf))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(ct.Path(agentConf), append(append([]byte{}, good...), "noSuchKey: 1\n"...), 0o644))
		_, err = ct.Run(ctxT(t, 60*time.Second), "systemctl", "reload", agentUnit)
		assert.Error(t, err, "reload of a file the agent rejects must fail")
		p = show(t, ct, agentUnit, "ActiveState", "MainPID")
		assert.Equal(t, "active", p["ActiveState"])
		assert.Equal(t, firstPID, p["MainPID"])
		require.NoError(t, os.WriteFile(ct.Path(agentConf), good, 0o644))
	})
	step("a killed agent is restarted with its state", func(t *testing.T) {
		_, err := ct.Run(ctxT(t, 10*time.Second), "systemctl", "kill", "--signal=SIGKILL", agentUnit)
		require.NoError(t, err)
		eventually(t, 30*time.Second, "restart after SIGKILL", func() error {
			p := show(t, ct, agentUnit, "ActiveState", "MainPID", "NRestarts")
			if p["ActiveState"] != "active" || p["NRestarts"] != "1" || p["MainPID"] == firstPID {
				return fmt.Errorf("not yet: %v", p)
			}
			firstPID = p["MainPID"]
			return nil
		})
		cr, err := clientCert(ct)
		require.NoError(t, err)
		assert.Equal(t, serial, cr.Serial, "a restart must reuse the stored credentials")
		assert.Equal(t, certFile, currentCert(t), "a restart must reuse the stored credentials")
	})
	step("a hung agent is killed by the watchdog and restarted", func(t *testing.T) {
		// The unit's WatchdogSec, shortened for the test by a drop-in.
		dropin := ct.Path("/etc/systemd/system/" + agentUnit + ".d")
		require.NoError(t, os.MkdirAll(dropin, 0o755))
		require.NoError(t, os.WriteFile(dropin+"/watchdog.conf", []byte("[Service]\nWatchdogSec=5s\n"), 0o644))
		t.Cleanup(func() {
			os.RemoveAll(dropin)
			ct.Run(ctxT(t, 30*time.Second), "systemctl", "daemon-reload")
		})
		_, err := ct.Run(ctxT(t, 30*time.Second), "systemctl", "daemon-reload")
		require.NoError(t, err)
		_, err = ct.Run(ctxT(t, 90*time.Second), "systemctl", "restart", agentUnit)
		require.NoError(t, err)
		p := show(t, ct, agentUnit, "MainPID", "NRestarts", "WatchdogTimestampMonotonic", "WatchdogUSec")
		require.Equal(t, "5s", p["WatchdogUSec"])
		pid, restarts := p["MainPID"], p["NRestarts"]
		eventually(t, 15*time.Second, "a watchdog ping", func() error {
			if now := show(t, ct, agentUnit, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]; now == p["WatchdogTimestampMonotonic"] {
				return fmt.Errorf("no ping since %s", now)
			}
			return nil
		})
		_, err = ct.Sh(ctxT(t, 10*time.Second), "kill -STOP "+pid)
		require.NoError(t, err)
		eventually(t, 40*time.Second, "restart after the watchdog timeout", func() error {
			q := show(t, ct, agentUnit, "ActiveState", "MainPID", "NRestarts")
			if q["ActiveState"] != "active" || q["MainPID"] == pid || q["NRestarts"] == restarts {
				return fmt.Errorf("not yet: %v", q)
			}
			firstPID = q["MainPID"]
			return nil
		})
		out, err := ct.Run(ctxT(t, 10*time.Second), "journalctl", "--no-pager", "-u", agentUnit, "-g", "watchdog")
		require.NoError(t, err)
		assert.Contains(t, string(out), "Watchdog timeout")
		assert.Equal(t, certFile, currentCert(t), "the restart must reuse the stored credentials")
	})
	var confBefore []byte
	step("upgrade keeps the edited config and the state, restarts the agent", func(t *testing.T) {
		var err error
		confBefore, err = os.ReadFile(ct.Path(agentConf))
		require.NoError(t, err)
		dpkgInstall(t, ct, f.New, "new", "nodetrust", "nodetrust-agent")
		out, err := ct.Run(ctxT(t, 10*time.Second), "dpkg-query", "-W", "-f=${Version}", "nodetrust-agent")
		require.NoError(t, err)
		assert.Equal(t, newVersion+"-1", string(out))
		out, err = ct.Run(ctxT(t, 10*time.Second), "nodetrust", "version")
		require.NoError(t, err)
		assert.Contains(t, string(out), newVersion)
		confAfter, err := os.ReadFile(ct.Path(agentConf))
		require.NoError(t, err)
		assert.Equal(t, string(confBefore), string(confAfter), "the administrator's edit of %s must survive the upgrade", agentConf)
		_, err = os.Stat(ct.Path(agentConf + ".dpkg-dist"))
		assert.ErrorIs(t, err, fs.ErrNotExist, "no .dpkg-dist: the packaged file did not change")
		p := show(t, ct, agentUnit, "ActiveState", "SubState", "MainPID", "NRestarts")
		assert.Equal(t, "active", p["ActiveState"])
		assert.NotEqual(t, firstPID, p["MainPID"], "the upgrade must restart the agent onto the new binary")
		t.Logf("MainPID %s -> %s, NRestarts %s", firstPID, p["MainPID"], p["NRestarts"])
		cr, err := clientCert(ct)
		require.NoError(t, err)
		assert.Equal(t, serial, cr.Serial, "the state (credentials) must survive the upgrade: same certificate, no new bootstrap")
		// The restarted agent is READY (try-restart waited for it), so a
		// new bootstrap would have moved the link already.
		assert.Equal(t, certFile, currentCert(t), "the upgrade must keep the credentials")
	})
	step("remove stops the agent and keeps config and state", func(t *testing.T) {
		_, err := ct.Run(ctxT(t, 60*time.Second), "dpkg", "-r", "nodetrust-agent")
		require.NoError(t, err)
		p := show(t, ct, agentUnit, "ActiveState")
		assert.Equal(t, "inactive", p["ActiveState"])
		conf, err := os.ReadFile(ct.Path(agentConf))
		require.NoError(t, err, "dpkg -r keeps the conffile")
		assert.Equal(t, string(confBefore), string(conf))
		_, err = os.Lstat(ct.Path(agentState + "/pki/kubelet-client-current.pem"))
		assert.NoError(t, err, "dpkg -r keeps the state")
		out, err := ct.Run(ctxT(t, 10*time.Second), "dpkg-query", "-W", "-f=${db:Status-Status}", "nodetrust-agent")
		require.NoError(t, err)
		assert.Equal(t, "config-files", string(out))
	})
	step("purge deletes config and state", func(t *testing.T) {
		_, err := ct.Run(ctxT(t, 60*time.Second), "dpkg", "--purge", "nodetrust-agent")
		require.NoError(t, err)
		for _, p := range []string{agentConf, agentState} {
			_, err := os.Lstat(ct.Path(p))
			assert.ErrorIs(t, err, fs.ErrNotExist, "%s after purge", p)
		}
		_, err = ct.Run(ctxT(t, 10*time.Second), "getent", "passwd", "nodetrust")
		assert.NoError(t, err, "the system user stays (Debian practice)")
		// No enablement or mask left behind.
		out, err := ct.Run(ctxT(t, 10*time.Second), "find", "/etc/systemd/system", "-name", "nodetrust-agent*")
		require.NoError(t, err)
		assert.Empty(t, strings.TrimSpace(string(out)), "left in /etc/systemd/system after purge")
	})
}

// checkStateOwnership checks the agent's state folder: owned by uid, and
// every file holding a private key 0600 and owned by uid.
func checkStateOwnership(t *testing.T, dir string, uid int) {
	t.Helper()
	var keys []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(dir, p)
		if int(st.Uid) != uid {
			t.Errorf("%s is owned by uid %d, want the nodetrust user (%d)", rel, st.Uid, uid)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.Contains(string(b), "PRIVATE KEY") {
			keys = append(keys, rel)
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s holds a private key with mode %#o, want 0600", rel, fi.Mode().Perm())
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.NotEmpty(t, keys, "no private key under %s", dir)
	t.Logf("%d files with keys, all 0600 and owned by uid %d: %s", len(keys), uid, strings.Join(keys, " "))
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Zero(t, fi.Mode().Perm()&0o007, "%s must not be world-accessible (%#o)", dir, fi.Mode().Perm())
}
