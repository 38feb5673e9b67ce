//go:build linux

package machine

import (
	"os"
	"testing"

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
