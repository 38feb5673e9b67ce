package packaging

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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
