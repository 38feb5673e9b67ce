//go:build linux

package machine

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMirrorParsing(t *testing.T) {
	tests := []struct {
		name, text string
		deb822     bool
		want       string
	}{
		{"one-line", "deb http://m.example/debian bookworm main contrib\n", false, "http://m.example/debian"},
		{"one-line options", "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n", false, "http://m.example/debian"},
		{"one-line other suite", "deb http://m.example/debian trixie main\n", false, ""},
		{"one-line deb-src", "deb-src http://m.example/debian bookworm main\n", false, ""},
		{"deb822", "Types: deb\n# comment: x\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n", true, "http://m.example/debian"},
		{"deb822 second stanza", "Types: deb\nURIs: http://s.example/x\nSuites: nodistro\nComponents: main\n\nTypes: deb\nURIs: http://m.example/debian\nSuites: bookworm\nComponents: main\n", true, "http://m.example/debian"},
		{"deb822 security only", "Types: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\nComponents: main\n", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mirrorOneLine(tt.text)
			if tt.deb822 {
				got = mirrorDeb822(tt.text)
			}
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestRootfsCached(t *testing.T) {
	requireRoot(t)
	requireTools(t, "debootstrap")
	dir, built, err := Rootfs(testLog{t})
	require.NoError(t, err)
	if built > 0 {
		t.Logf("built the root file system %s in %v", dir, built)
	}
	for _, p := range []string{"usr/lib/systemd/systemd", "usr/bin/curl", "usr/sbin/adduser", "etc/nodetrust-test-rootfs"} {
		_, err := os.Stat(dir + "/" + p)
		assert.NoError(t, err, "%s in the root file system", p)
	}
}

// fakeDebootstrap puts a debootstrap on PATH that makes a tiny root in its
// target folder, counts its runs in the returned file, and fails when
// FAKE_DEBOOTSTRAP_FAIL is set.
func fakeDebootstrap(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	count := filepath.Join(bin, "runs")
	script := `#!/bin/sh
dir=$4
echo "$*" >> ` + count + `
mkdir -p "$dir/etc" "$dir/var/cache/apt/archives"
printf 'root:*:19000:0:99999:7:::\n' > "$dir/etc/shadow"
touch "$dir/var/cache/apt/archives/x.deb"
sleep 0.3
[ -z "$FAKE_DEBOOTSTRAP_FAIL" ]
`
	require.NoError(t, os.WriteFile(filepath.Join(bin, "debootstrap"), []byte(script), 0o755))
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	t.Setenv("NODETRUST_TEST_CACHE", t.TempDir())
	t.Setenv("NODETRUST_TEST_MIRROR", "http://mirror.invalid/debian")
	return count
}

func TestRootfsBuildsOnceUnderTheLock(t *testing.T) {
	count := fakeDebootstrap(t)
	type result struct {
		dir   string
		built time.Duration
		err   error
	}
	results := make(chan result, 3)
	for range 3 {
		go func() {
			dir, built, err := Rootfs(io.Discard)
			results <- result{dir, built, err}
		}()
	}
	var dirs []string
	var builders int
	for range 3 {
		r := <-results
		require.NoError(t, r.err)
		dirs = append(dirs, r.dir)
		if r.built > 0 {
			builders++
		}
	}
	assert.Equal(t, 1, builders, "exactly one caller builds")
	assert.Equal(t, dirs[0], dirs[1])
	assert.Equal(t, dirs[0], dirs[2])
	runs, err := os.ReadFile(count)
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(runs), "\n"), "debootstrap runs once: %s", runs)
	assert.Contains(t, string(runs), "--variant=minbase --include="+strings.Join(RootfsPackages, ",")+" "+Suite+" ")
	assert.Contains(t, string(runs), " http://mirror.invalid/debian")
	shadow, err := os.ReadFile(filepath.Join(dirs[0], "etc", "shadow"))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(shadow), "root::"), "root has no password: %q", shadow)
	debs, _ := filepath.Glob(filepath.Join(dirs[0], "var", "cache", "apt", "archives", "*.deb"))
	assert.Empty(t, debs)
	// Cached: no second debootstrap.
	_, built, err := Rootfs(io.Discard)
	require.NoError(t, err)
	assert.Zero(t, built)
}

func TestRootfsFailedBuildLeavesNoCache(t *testing.T) {
	fakeDebootstrap(t)
	t.Setenv("FAKE_DEBOOTSTRAP_FAIL", "1")
	_, _, err := Rootfs(io.Discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "debootstrap")
	entries, err := os.ReadDir(CacheDir())
	require.NoError(t, err)
	for _, e := range entries {
		assert.True(t, strings.HasSuffix(e.Name(), ".lock"), "left in the cache after a failed build: %s", e.Name())
	}
	// The next attempt builds.
	t.Setenv("FAKE_DEBOOTSTRAP_FAIL", "")
	dir, built, err := Rootfs(io.Discard)
	require.NoError(t, err)
	assert.NotZero(t, built)
	assert.DirExists(t, dir)
}
