package controlplane_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/metadata"
)

const testBundle = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"

const oneInstance = "instances:\n- {name: n1, id: 1, zone: z, hostAddresses: [10.0.0.1], networkInterfaces: [{ip: 10.0.0.1}]}\n"

func writeTemp(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "metadata.yaml")
	require.NoError(t, os.WriteFile(p, []byte(content), mode))
	return p
}

// TestPublishBundleKeepsTheRest: the sample data file gets the attribute
// and keeps every other line byte for byte, comments and order included.
func TestPublishBundleKeepsTheRest(t *testing.T) {
	orig, err := os.ReadFile("../metadata/testdata/sample.yaml")
	require.NoError(t, err)
	p := writeTemp(t, string(orig), 0o640)
	require.NoError(t, controlplane.PublishBundle(p, []byte(testBundle)))
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	d, err := metadata.Parse(got)
	require.NoError(t, err)
	assert.Equal(t, testBundle, d.Project.Attributes[controlplane.BundleAttribute])
	before, _ := metadata.Parse(orig)
	d.Project.Attributes = before.Project.Attributes
	assert.Equal(t, before, d, "everything but the attribute is unchanged")

	// Every original line is still there, in order (yaml.v3 may quote a
	// plain scalar it finds ambiguous, here a URL in a flow sequence).
	unquote := strings.NewReplacer("'", "", `"`, "")
	gotLines := strings.Split(unquote.Replace(string(got)), "\n")
	i := 0
	for _, line := range strings.Split(unquote.Replace(string(orig)), "\n") {
		for i < len(gotLines) && gotLines[i] != line {
			i++
		}
		require.Less(t, i, len(gotLines), "line %q was changed", line)
	}
	fi, _ := os.Stat(p)
	assert.Equal(t, os.FileMode(0o640), fi.Mode().Perm())

	// The same bundle again writes nothing; another replaces the value.
	before2, _ := os.Stat(p)
	require.NoError(t, controlplane.PublishBundle(p, []byte(testBundle)))
	after2, _ := os.Stat(p)
	assert.True(t, os.SameFile(before2, after2), "unchanged value rewrote the file")
	require.NoError(t, controlplane.PublishBundle(p, []byte("x\n")))
	d, err = metadata.LoadFile(p)
	require.NoError(t, err)
	assert.Equal(t, "x\n", d.Project.Attributes[controlplane.BundleAttribute])
	assert.Equal(t, "demo", d.Project.Attributes["cluster-name"])
}

func TestPublishBundleShapes(t *testing.T) {
	tests := []struct {
		name, in string
	}{
		{"no project", ""},
		{"project without attributes", "project:\n  projectId: p\n"},
		{"flow project", "project: {projectId: p, numericProjectId: 1}\n"},
		{"flow attributes", "project:\n  attributes: {a: b}\n"},
		{"four-space indent", "project:\n    projectId: p\n    attributes:\n        a: b\n"},
		{"null attributes", "project:\n  attributes:\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeTemp(t, tt.in+oneInstance, 0o600)
			require.NoError(t, controlplane.PublishBundle(p, []byte(testBundle)))
			d, err := metadata.LoadFile(p)
			require.NoError(t, err)
			assert.Equal(t, testBundle, d.Project.Attributes[controlplane.BundleAttribute])
		})
	}
}

// TestPublishBundleRefusesInvalid: a file that is not valid data stays as
// it was, and the error names it.
func TestPublishBundleRefusesInvalid(t *testing.T) {
	for _, in := range []string{"project: [1, 2]\n" + oneInstance, "bogusField: 1\n" + oneInstance, "project: {}\n", "- a\n- b\n", "a: [\n"} {
		p := writeTemp(t, in, 0o600)
		err := controlplane.PublishBundle(p, []byte(testBundle))
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), p)
		b, _ := os.ReadFile(p)
		assert.Equal(t, in, string(b))
	}
	assert.ErrorContains(t, controlplane.PublishBundle(filepath.Join(t.TempDir(), "none.yaml"), []byte(testBundle)), "none.yaml")
}
