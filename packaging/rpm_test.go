package packaging

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func rpmQuery(t *testing.T, rpm string, args ...string) string {
	t.Helper()
	return run(t, "rpm", append([]string{"-qp", "--nosignature", "--nodigest"}, append(args, rpm)...)...)
}

func TestRPMHeader(t *testing.T) {
	needTool(t, "rpm")
	pkgs := packages(t)
	for _, tc := range []struct{ pkg, arch, requires string }{
		{CommonPackage, "x86_64", ""},
		{AgentPackage, "noarch", "nodetrust = 1.2.3-1"},
		{ServerPackage, "noarch", "nodetrust = 1.2.3-1"},
	} {
		t.Run(tc.pkg, func(t *testing.T) {
			r := pkgs[tc.pkg+" rpm"]
			assert.Equal(t, tc.pkg+" 1.2.3 1 "+tc.arch+" Apache-2.0 nodetrust-build 1700000000",
				rpmQuery(t, r, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE} %{BUILDHOST} %{BUILDTIME}"))
			if tc.requires != "" {
				assert.Contains(t, rpmQuery(t, r, "--requires"), tc.requires+"\n")
			}
			assert.Contains(t, rpmQuery(t, r, "--changelog"), "- 1.2.3-1\n")
		})
	}
}

func TestRPMFiles(t *testing.T) {
	needTool(t, "rpm")
	pkgs := packages(t)
	type want struct{ flags, perms, owner string }
	for _, tc := range []struct {
		pkg   string
		files map[string]want
	}{
		{CommonPackage, map[string]want{
			"/usr/bin/nodetrust":                 {"", "-rwxr-xr-x", "root:root"},
			"/usr/share/man/man8/nodetrust.8.gz": {"d", "-rw-r--r--", "root:root"},
			"/usr/share/doc/nodetrust/copyright": {"d", "-rw-r--r--", "root:root"},
			"/usr/lib/sysusers.d/nodetrust.conf": {"", "-rw-r--r--", "root:root"},
		}},
		{AgentPackage, map[string]want{
			"/usr/lib/systemd/system-preset/90-nodetrust-agent.preset": {"", "-rw-r--r--", "root:root"},
			"/etc/nodetrust/agent.yaml":                                {"cn", "-rw-r--r--", "root:root"},
			"/usr/lib/systemd/system/nodetrust-agent.service":          {"", "-rw-r--r--", "root:root"},
			"/var/lib/nodetrust":                                       {"", "drwxr-x---", "nodetrust:nodetrust"},
		}},
		{ServerPackage, map[string]want{
			"/usr/lib/systemd/system/nodetrust-metadata.socket": {"", "-rw-r--r--", "root:root"},
			"/etc/default/nodetrust-controlplane":               {"cn", "-rw-r--r--", "root:root"},
			"/etc/nodetrust/metadata.yaml.example":              {"cn", "-rw-r--r--", "root:root"},
			"/var/lib/nodetrust/controlplane":                   {"", "drwxr-x---", "nodetrust:nodetrust"},
			"/var/lib/nodetrust-signer":                         {"", "drwx------", "nodetrust-signer:nodetrust-signer"},
		}},
	} {
		t.Run(tc.pkg, func(t *testing.T) {
			out := rpmQuery(t, pkgs[tc.pkg+" rpm"], "--qf",
				"[%{FILENAMES}\t%{FILEFLAGS:fflags}\t%{FILEMODES:perms}\t%{FILEUSERNAME}:%{FILEGROUPNAME}\t%{FILEMTIMES}\n]")
			got := map[string]want{}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Split(line, "\t")
				require.Len(t, f, 5, line)
				got[f[0]] = want{f[1], f[2], f[3]}
				assert.Equal(t, "1700000000", f[4], "%s mtime", f[0])
			}
			for name, w := range tc.files {
				assert.Equal(t, w, got[name], name)
			}
		})
	}
}

func TestRPMScriptlets(t *testing.T) {
	needTool(t, "rpm")
	pkgs := packages(t)
	common := rpmQuery(t, pkgs["nodetrust rpm"], "--scripts")
	assert.Contains(t, common, "preinstall scriptlet")
	assert.Contains(t, common, "systemd-sysusers --replace=/usr/lib/sysusers.d/nodetrust.conf -")
	assert.Contains(t, common, "u nodetrust-signer ")
	assert.Contains(t, common, "useradd -r -g nodetrust-signer")
	assert.NotContains(t, common, "nodetrust-metadata", "the server's own user is made by the server package")
	server := rpmQuery(t, pkgs["nodetrust-server rpm"], "--scripts")
	assert.Contains(t, server, "preinstall scriptlet")
	assert.Contains(t, server, "systemd-sysusers --replace=/usr/lib/sysusers.d/nodetrust-server.conf -")
	assert.Contains(t, server, "systemd-tmpfiles --create nodetrust-server.conf")

	agent := rpmQuery(t, pkgs["nodetrust-agent rpm"], "--scripts")
	for _, s := range []string{"postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet",
		"systemctl --no-reload preset nodetrust-agent.service",
		"systemctl --no-reload disable --now nodetrust-agent.service",
		"systemctl try-restart nodetrust-agent.service"} {
		assert.Contains(t, agent, s)
	}
	// No deb logic leaked into the rpm.
	for _, s := range []string{"deb-systemd", "rm -rf", "configure", "purge"} {
		assert.NotContains(t, agent, s)
	}
}
