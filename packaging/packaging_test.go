package packaging

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/metadata"
)

// testEpoch stands in for SOURCE_DATE_EPOCH.
var testEpoch = time.Unix(1700000000, 0).UTC()

var (
	builtOnce sync.Once
	built     map[string]string // "name format" -> path
	builtErr  error
	builtDir  string
)

// fakeBinary builds a tiny static Go program to stand in for nodetrust:
// an ELF like the real one (so lintian's binary checks run) in a second
// instead of a full build.
func fakeBinary(dir string) (string, error) {
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() { println(\"nodetrust stand-in\") }\n"), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "nodetrust")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build stand-in binary: %v\n%s", err, out)
	}
	return bin, nil
}

// packages builds every package once per test binary, from the units in
// testdata/systemd, and returns them by "name format".
func packages(t *testing.T) map[string]string {
	t.Helper()
	builtOnce.Do(func() {
		builtDir, builtErr = os.MkdirTemp("", "nodetrust-packaging-test-")
		if builtErr != nil {
			return
		}
		var bin string
		if bin, builtErr = fakeBinary(builtDir); builtErr != nil {
			return
		}
		built, builtErr = buildInto(bin, filepath.Join(builtDir, "dist"), "testdata", testEpoch)
	})
	require.NoError(t, builtErr)
	return built
}

func buildInto(bin, out, root string, epoch time.Time) (map[string]string, error) {
	arts, err := Build(Options{Root: root, Binary: bin, Version: "1.2.3", OutDir: out, Epoch: epoch})
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, a := range arts {
		m[a.Package+" "+a.Format] = a.Path
	}
	return m, nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed: skipping (make deps installs it)", name)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "%s %s: %s", name, strings.Join(args, " "), stderr.String())
	return stdout.String()
}

func TestFileNames(t *testing.T) {
	pkgs := packages(t)
	want := map[string]string{
		"nodetrust deb":        "nodetrust_1.2.3-1_amd64.deb",
		"nodetrust-agent deb":  "nodetrust-agent_1.2.3-1_all.deb",
		"nodetrust-server deb": "nodetrust-server_1.2.3-1_all.deb",
		"nodetrust rpm":        "nodetrust-1.2.3-1.x86_64.rpm",
		"nodetrust-agent rpm":  "nodetrust-agent-1.2.3-1.noarch.rpm",
		"nodetrust-server rpm": "nodetrust-server-1.2.3-1.noarch.rpm",
	}
	require.Len(t, pkgs, len(want))
	for k, name := range want {
		assert.Equal(t, name, filepath.Base(pkgs[k]), k)
	}
}

func TestDebControl(t *testing.T) {
	needTool(t, "dpkg-deb")
	pkgs := packages(t)
	for _, tc := range []struct {
		pkg, arch, depends string
		conffiles          []string
	}{
		{CommonPackage, "amd64", "adduser", nil},
		{AgentPackage, "all", "nodetrust (= 1.2.3-1)", []string{"/etc/nodetrust/agent.yaml"}},
		{ServerPackage, "all", "adduser, nodetrust (= 1.2.3-1)", []string{"/etc/default/nodetrust-controlplane", "/etc/nodetrust/metadata.yaml.example"}},
	} {
		t.Run(tc.pkg, func(t *testing.T) {
			deb := pkgs[tc.pkg+" deb"]
			fields := run(t, "dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends", "Section", "Maintainer")
			assert.Contains(t, fields, "Package: "+tc.pkg+"\n")
			assert.Contains(t, fields, "Version: 1.2.3-1\n")
			assert.Contains(t, fields, "Architecture: "+tc.arch+"\n")
			assert.Contains(t, fields, "Depends: "+tc.depends+"\n")
			assert.Contains(t, fields, "Maintainer: ")

			ctl := t.TempDir()
			run(t, "dpkg-deb", "-e", deb, ctl)
			conf, err := os.ReadFile(filepath.Join(ctl, "conffiles"))
			if tc.conffiles == nil {
				assert.True(t, errors.Is(err, os.ErrNotExist), "no conffiles expected")
			} else {
				require.NoError(t, err)
				assert.Equal(t, strings.Join(tc.conffiles, "\n")+"\n", string(conf))
			}
			scripts := []string{"postinst", "prerm", "postrm"}
			if tc.pkg == CommonPackage {
				scripts = []string{"postinst"}
			}
			for _, s := range scripts {
				fi, err := os.Stat(filepath.Join(ctl, s))
				require.NoError(t, err, "%s missing", s)
				assert.Equal(t, os.FileMode(0o755), fi.Mode().Perm(), s)
				b, _ := os.ReadFile(filepath.Join(ctl, s))
				assert.True(t, strings.HasPrefix(string(b), "#!/bin/sh\n"), s)
				assert.Contains(t, string(b), "\nset -e\n", s)
				assert.NotContains(t, string(b), "<no value>", s)
				run(t, "sh", "-n", filepath.Join(ctl, s))
			}
		})
	}
}

// tarEntry is one file of a package's data.
type tarEntry struct {
	mode     os.FileMode
	uid, gid int
	owner    string
	typ      byte
}

func debFiles(t *testing.T, deb string) map[string]tarEntry {
	t.Helper()
	data := run(t, "dpkg-deb", "--fsys-tarfile", deb)
	tr := tar.NewReader(strings.NewReader(data))
	m := map[string]tarEntry{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		assert.True(t, h.ModTime.Equal(testEpoch), "%s has mtime %v, want SOURCE_DATE_EPOCH", h.Name, h.ModTime)
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "."), "/")
		m[name] = tarEntry{mode: os.FileMode(h.Mode).Perm(), uid: h.Uid, gid: h.Gid, owner: h.Uname + ":" + h.Gname, typ: h.Typeflag}
	}
	return m
}

func TestDebFiles(t *testing.T) {
	needTool(t, "dpkg-deb")
	pkgs := packages(t)
	for _, tc := range []struct {
		pkg   string
		files map[string]os.FileMode
	}{
		{CommonPackage, map[string]os.FileMode{
			"/usr/bin/nodetrust":                           0o755,
			"/usr/share/man/man8/nodetrust.8.gz":           0o644,
			"/usr/lib/sysusers.d/nodetrust.conf":           0o644,
			"/usr/lib/tmpfiles.d/nodetrust.conf":           0o644,
			"/usr/share/doc/nodetrust/copyright":           0o644,
			"/usr/share/doc/nodetrust/changelog.Debian.gz": 0o644,
			"/usr/share/lintian/overrides/nodetrust":       0o644,
		}},
		{AgentPackage, map[string]os.FileMode{
			"/usr/lib/systemd/system/nodetrust-agent.service":    0o644,
			"/etc/nodetrust/agent.yaml":                          0o644,
			"/usr/share/man/man5/nodetrust-agent.yaml.5.gz":      0o644,
			"/usr/share/doc/nodetrust-agent/copyright":           0o644,
			"/usr/share/doc/nodetrust-agent/changelog.Debian.gz": 0o644,
			"/usr/share/lintian/overrides/nodetrust-agent":       0o644,
		}},
		{ServerPackage, map[string]os.FileMode{
			"/usr/lib/systemd/system/nodetrust-metadata.service":     0o644,
			"/usr/lib/systemd/system/nodetrust-metadata.socket":      0o644,
			"/usr/lib/systemd/system/nodetrust-controlplane.service": 0o644,
			"/usr/lib/systemd/system/nodetrust-signer.service":       0o644,
			"/usr/share/doc/nodetrust-server/copyright":              0o644,
			"/usr/share/lintian/overrides/nodetrust-server":          0o644,
			"/etc/default/nodetrust-controlplane":                    0o644,
			"/etc/nodetrust/metadata.yaml.example":                   0o644,
			"/usr/lib/sysusers.d/nodetrust-server.conf":              0o644,
			"/usr/lib/tmpfiles.d/nodetrust-server.conf":              0o644,
		}},
	} {
		t.Run(tc.pkg, func(t *testing.T) {
			got := debFiles(t, pkgs[tc.pkg+" deb"])
			for name, mode := range tc.files {
				e, ok := got[name]
				if !assert.True(t, ok, "%s missing", name) {
					continue
				}
				assert.Equal(t, mode, e.mode, name)
			}
			for name, e := range got {
				// nfpm writes the changelog it generates as 0/0 without names.
				assert.Equal(t, [2]int{0, 0}, [2]int{e.uid, e.gid}, "%s owner", name)
				assert.Contains(t, []string{"root:root", ":"}, e.owner, "%s owner", name)
				if e.typ == tar.TypeReg && !strings.HasPrefix(name, "/usr/share/doc/") {
					assert.Contains(t, tc.files, name, "file not expected in %s", tc.pkg)
				}
			}
			if tc.pkg != CommonPackage {
				assert.NotContains(t, got, "/usr/bin/nodetrust", "only the common package ships the binary")
			}
			for name := range got {
				assert.False(t, strings.HasPrefix(name, "/usr/lib/systemd/system-preset/"), "%s: presets are for rpm", name)
			}
		})
	}
}

func TestPresetEnablesInstallableUnits(t *testing.T) {
	pkgs := packages(t)
	_ = pkgs
	units, err := findUnits("testdata/systemd/units", false)
	require.NoError(t, err)
	b := &builder{units: units}
	// The fixture's metadata service is socket-activated: no [Install].
	assert.Equal(t, "# nodetrust-server: enable on install, start once configured (docs/packaging.md)\n"+
		"enable nodetrust-controlplane.service\nenable nodetrust-metadata.socket\nenable nodetrust-signer.service\n",
		b.preset(ServerPackage))
}

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

// stubEnv runs a maintainer script with every command it may call
// replaced by a stub that logs its arguments, and returns the log.
func stubScript(t *testing.T, script string, args ...string) []string {
	t.Helper()
	return stubScriptEnv(t, nil, script, args...)
}

// stubScriptEnv is stubScript with extra environment variables; the
// dpkg-query stub prints $DPKG_QUERY_STATUS.
func stubScriptEnv(t *testing.T, env []string, script string, args ...string) []string {
	t.Helper()
	return stubScriptWithout(t, nil, env, script, args...)
}

// stubScriptWithout is stubScriptEnv without the stubs named in omit (so
// the script finds no such command: PATH then holds the stubs only).
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

func TestReproducible(t *testing.T) {
	pkgs := packages(t)
	again, err := buildInto(filepath.Join(builtDir, "nodetrust"), t.TempDir(), "testdata", testEpoch)
	require.NoError(t, err)
	for k, p := range pkgs {
		a, err := os.ReadFile(p)
		require.NoError(t, err)
		b, err := os.ReadFile(again[k])
		require.NoError(t, err)
		assert.True(t, bytes.Equal(a, b), "%s differs between two builds with the same SOURCE_DATE_EPOCH", k)
	}
	later, err := buildInto(filepath.Join(builtDir, "nodetrust"), t.TempDir(), "testdata", testEpoch.Add(time.Hour))
	require.NoError(t, err)
	a, _ := os.ReadFile(pkgs["nodetrust deb"])
	b, _ := os.ReadFile(later["nodetrust deb"])
	assert.False(t, bytes.Equal(a, b), "the epoch should reach the package")
}

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

func TestMissingAndUnknownUnits(t *testing.T) {
	root := t.TempDir()
	units := filepath.Join(root, "systemd", "units")
	require.NoError(t, os.MkdirAll(units, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(units, "nodetrust-agent.service"), []byte("[Service]\nExecStart=/bin/true\n"), 0o644))

	_, err := findUnits(units, false)
	require.ErrorIs(t, err, ErrMissingUnit)
	assert.Contains(t, err.Error(), "nodetrust-signer.service")
	assert.Contains(t, err.Error(), units)

	got, err := findUnits(units, true)
	require.NoError(t, err)
	assert.Equal(t, []Unit{{Name: "nodetrust-agent.service", Source: filepath.Join(units, "nodetrust-agent.service")}}, got[AgentPackage])

	require.NoError(t, os.WriteFile(filepath.Join(units, "other.service"), []byte("[Service]\n"), 0o644))
	_, err = findUnits(units, true)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unit other.service in "+units+" belongs to no package")
}

func TestUndeclaredUser(t *testing.T) {
	units := map[string][]Unit{AgentPackage: {{Name: "nodetrust-agent.service", User: "nodetrust"}}}
	err := checkUsers(units, []SystemdConf{{Package: ServerPackage, Users: []string{"nodetrust"}}})
	require.ErrorIs(t, err, ErrUndeclaredUser)
	assert.Contains(t, err.Error(), "nodetrust-agent.service runs as User=nodetrust")
	assert.NoError(t, checkUsers(units, []SystemdConf{{Package: CommonPackage, Users: []string{"nodetrust"}}}))
	assert.NoError(t, checkUsers(units, []SystemdConf{{Package: AgentPackage, Users: []string{"nodetrust"}}}))
}

func TestBuildErrors(t *testing.T) {
	_, err := Build(Options{Root: "testdata", Binary: "/nonexistent/nodetrust", Version: "1.2.3", OutDir: t.TempDir(), Epoch: testEpoch})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "make build")

	t.Setenv("SOURCE_DATE_EPOCH", "")
	_, err = Build(Options{Root: "testdata", Binary: "/bin/sh", Version: "1.2.3", OutDir: t.TempDir()})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "SOURCE_DATE_EPOCH")
}

// TestRealUnits builds from the repository's own systemd/ folder, once
// every unit the packages need is there, and lints the result.
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

// TestShippedConfigs checks the shipped configuration against the real
// parsers: the metadata example loads as it is, and agent.yaml becomes a
// valid configuration once server is set, as its comments say.
func TestShippedConfigs(t *testing.T) {
	_, err := metadata.LoadFile("files/etc/metadata.yaml.example")
	require.NoError(t, err)

	b, err := embedded.ReadFile("files/etc/agent.yaml")
	require.NoError(t, err)
	_, err = agent.ParseConfig(b)
	require.Error(t, err, "as shipped, the agent refuses to start: server is not set")
	configured := strings.Replace(string(b), "#server:", "server:", 1)
	_, err = agent.ParseConfig([]byte(configured))
	require.NoError(t, err)
}
