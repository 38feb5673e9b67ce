package packaging

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func stubScript(t *testing.T, script string, args ...string) []string {
	t.Helper()
	return stubScriptEnv(t, nil, script, args...)
}

func stubScriptEnv(t *testing.T, env []string, script string, args ...string) []string {
	t.Helper()
	return stubScriptWithout(t, nil, env, script, args...)
}

func stubScriptWithout(t *testing.T, omit, env []string, script string, args ...string) []string {
	t.Helper()
	dir := t.TempDir()
	logf := filepath.Join(dir, "calls.log")
	stubs := []string{"systemctl", "deb-systemd-helper", "deb-systemd-invoke", "systemd-sysusers",
		"systemd-tmpfiles", "adduser", "useradd", "groupadd", "getent", "rm", "rmdir", "find", "dpkg-query"}
	for _, s := range stubs {
		if slices.Contains(omit, s) {
			continue
		}
		body := fmt.Sprintf("#!/bin/sh\necho \"%s $*\" >> %s\n", s, logf)
		switch s {
		case "getent":
			body += "exit 2\n" // no such user yet
		case "dpkg-query":
			body += "echo \"$DPKG_QUERY_STATUS\"\n"
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, s), []byte(body), 0o755))
	}
	cmd := exec.Command("/bin/sh", append([]string{script}, args...)...)
	pathEnv := "PATH=" + dir + ":/usr/bin:/bin"
	if len(omit) > 0 {
		pathEnv = "PATH=" + dir // or the host's copy would be found
	}
	cmd.Env = append([]string{pathEnv}, env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %v: %s", script, args, out)
	b, err := os.ReadFile(logf)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func TestDebScriptBranches(t *testing.T) {
	needTool(t, "dpkg-deb")
	pkgs := packages(t)
	ctl := t.TempDir()
	run(t, "dpkg-deb", "-e", pkgs["nodetrust-agent deb"], ctl)
	script := func(s string) string { return filepath.Join(ctl, s) }
	_, err := os.Stat("/run/systemd/system")
	booted := err == nil
	ifBooted := func(calls ...string) []string {
		if booted {
			return calls
		}
		return nil
	}
	cat := func(parts ...[]string) []string {
		var all []string
		for _, p := range parts {
			all = append(all, p...)
		}
		return all
	}
	const u = "nodetrust-agent.service"
	enable := []string{"deb-systemd-helper unmask " + u, "deb-systemd-helper --quiet was-enabled " + u,
		"deb-systemd-helper enable " + u}

	// Fresh install: enabled, never started.
	assert.Equal(t, cat(ifBooted("systemctl --system daemon-reload"), enable),
		stubScript(t, script("postinst"), "configure", ""))
	// Upgrade: try-restart, which leaves a stopped service stopped.
	assert.Equal(t, cat(ifBooted("systemctl --system daemon-reload"), enable, ifBooted("deb-systemd-invoke try-restart "+u)),
		stubScript(t, script("postinst"), "configure", "1.2.2-1"))
	// prerm stops only on remove, never on upgrade.
	assert.Empty(t, stubScript(t, script("prerm"), "upgrade", "1.2.4-1"))
	assert.Equal(t, ifBooted("deb-systemd-invoke stop "+u), stubScript(t, script("prerm"), "remove"))
	// remove keeps state; purge deletes it.
	assert.Equal(t, cat(ifBooted("systemctl --system daemon-reload"), []string{"deb-systemd-helper mask " + u}),
		stubScript(t, script("postrm"), "remove"))
	// /var/lib/nodetrust holds the server's nodetrust/controlplane too:
	// purged only when nodetrust-server has no state left.
	purge := cat(ifBooted("systemctl --system daemon-reload"), []string{"deb-systemd-helper purge " + u,
		"deb-systemd-helper unmask " + u, "dpkg-query -W -f=${db:Status-Status} nodetrust-server"})
	assert.Equal(t, append(purge, "rm -rf /var/lib/nodetrust"), stubScript(t, script("postrm"), "purge"))
	assert.Equal(t, append(purge, "rm -rf /var/lib/nodetrust"),
		stubScriptEnv(t, []string{"DPKG_QUERY_STATUS=not-installed"}, script("postrm"), "purge"))
	keep := append(purge, "find /var/lib/nodetrust -mindepth 1 -maxdepth 1 ! -name controlplane -exec rm -rf {} +")
	assert.Equal(t, keep, stubScriptEnv(t, []string{"DPKG_QUERY_STATUS=config-files"}, script("postrm"), "purge"))
	assert.Equal(t, keep, stubScriptEnv(t, []string{"DPKG_QUERY_STATUS=installed"}, script("postrm"), "purge"))
	assert.Equal(t, ifBooted("systemctl --system daemon-reload"), stubScript(t, script("postrm"), "upgrade", "1.2.4-1"))

	srv := t.TempDir()
	run(t, "dpkg-deb", "-e", pkgs["nodetrust-server deb"], srv)
	srvUnits := "nodetrust-controlplane.service nodetrust-metadata.service nodetrust-metadata.socket nodetrust-signer.service"
	assert.Equal(t, cat(ifBooted("systemctl --system daemon-reload"), []string{
		"deb-systemd-helper purge " + srvUnits, "deb-systemd-helper unmask " + srvUnits,
		"rm -rf /var/lib/nodetrust-signer",
		"rm -rf /var/lib/nodetrust/controlplane", "rmdir /var/lib/nodetrust"}),
		stubScript(t, filepath.Join(srv, "postrm"), "purge"))

	// The server creates its own user and applies its own tmpfiles.d.
	assert.Equal(t, cat([]string{"systemd-sysusers nodetrust-server.conf", "systemd-tmpfiles --create nodetrust-server.conf"},
		ifBooted("systemctl --system daemon-reload"), []string{
			"deb-systemd-helper unmask nodetrust-controlplane.service nodetrust-metadata.socket nodetrust-signer.service",
			"deb-systemd-helper --quiet was-enabled nodetrust-controlplane.service nodetrust-metadata.socket nodetrust-signer.service",
			"deb-systemd-helper enable nodetrust-controlplane.service nodetrust-metadata.socket nodetrust-signer.service"}),
		stubScript(t, filepath.Join(srv, "postinst"), "configure", ""))
	postrm, err := os.ReadFile(filepath.Join(srv, "postrm"))
	require.NoError(t, err)
	assert.Contains(t, string(postrm), "\tif [ -d /var/lib/nodetrust-cp ]; then\n\t\tbackup=/var/backups/nodetrust-cp.purged-",
		"the control plane's data (CA key) is moved aside on purge, never deleted")
	assert.NotContains(t, string(postrm), "rm -rf /var/lib/nodetrust-cp")
	postinst, err := os.ReadFile(filepath.Join(srv, "postinst"))
	require.NoError(t, err)
	assert.Contains(t, string(postinst), "try-restart nodetrust-controlplane.service nodetrust-metadata.service nodetrust-signer.service >",
		"upgrade restarts the services, never the socket")

	ctl2 := t.TempDir()
	run(t, "dpkg-deb", "-e", pkgs["nodetrust deb"], ctl2)
	assert.Equal(t, []string{"getent passwd nodetrust", "adduser --system --group --quiet --no-create-home --home /nonexistent nodetrust",
		"getent passwd nodetrust-signer", "adduser --system --group --quiet --no-create-home --home /nonexistent nodetrust-signer",
		"adduser --quiet nodetrust-signer nodetrust", "systemd-tmpfiles --create nodetrust.conf"},
		stubScriptWithout(t, []string{"systemd-sysusers"}, nil, filepath.Join(ctl2, "postinst"), "configure", ""),
		"without systemd-sysusers, adduser makes the users and memberships")
	assert.Equal(t, []string{"systemd-sysusers nodetrust.conf", "systemd-tmpfiles --create nodetrust.conf"},
		stubScript(t, filepath.Join(ctl2, "postinst"), "configure", ""))
}

func TestRPMScriptBranches(t *testing.T) {
	needTool(t, "rpm")
	pkgs := packages(t)
	dir := t.TempDir()
	_, err := os.Stat("/run/systemd/system")
	booted := err == nil
	const u = "nodetrust-agent.service"
	scripts := map[string]string{}
	for _, tag := range []string{"POSTIN", "PREUN", "POSTUN"} {
		body := rpmQuery(t, pkgs["nodetrust-agent rpm"], "--qf", "%{"+tag+"}")
		p := filepath.Join(dir, tag)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o755))
		scripts[tag] = p
	}
	post1 := []string{"systemctl --no-reload preset " + u}
	if booted {
		post1 = append([]string{"systemctl daemon-reload"}, post1...)
	}
	assert.Equal(t, post1, stubScript(t, scripts["POSTIN"], "1"), "%post on install")
	assert.Empty(t, stubScript(t, scripts["POSTIN"], "2"), "%post on upgrade")
	assert.Empty(t, stubScript(t, scripts["PREUN"], "1"), "%preun on upgrade")
	assert.Equal(t, []string{"systemctl --no-reload disable --now " + u}, stubScript(t, scripts["PREUN"], "0"), "%preun on erase")
	if booted {
		assert.Equal(t, []string{"systemctl daemon-reload", "systemctl try-restart " + u}, stubScript(t, scripts["POSTUN"], "1"))
		assert.Equal(t, []string{"systemctl daemon-reload"}, stubScript(t, scripts["POSTUN"], "0"))
	} else {
		assert.Empty(t, stubScript(t, scripts["POSTUN"], "1"), "no systemd running: nothing to restart")
	}
}
