package packaging

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
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

// fakeBinary writes a stand-in for nodetrust: the smallest static x86-64
// ELF executable (it calls exit(0)), so lintian's binary checks run on an
// ELF like the real one while packaging stays fast (no Go build, nothing
// to compress).
func fakeBinary(dir string) (string, error) {
	code := []byte{0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05} // mov eax,60; xor edi,edi; syscall
	const base, ehSize, phSize = 0x400000, 64, 56
	size := uint64(ehSize + phSize + len(code))
	var elf bytes.Buffer
	elf.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // 64-bit, little endian
	le := binary.LittleEndian
	for _, v := range []any{
		uint16(2), uint16(0x3e), uint32(1), uint64(base + ehSize + phSize), // EXEC, x86-64, entry
		uint64(ehSize), uint64(0), uint32(0), // program headers, no sections, flags
		uint16(ehSize), uint16(phSize), uint16(1), uint16(64), uint16(0), uint16(0),
		uint32(1), uint32(5), uint64(0), uint64(base), uint64(base), size, size, uint64(0x1000), // PT_LOAD r-x
	} {
		if err := binary.Write(&elf, le, v); err != nil {
			return "", err
		}
	}
	elf.Write(code)
	bin := filepath.Join(dir, "nodetrust")
	return bin, os.WriteFile(bin, elf.Bytes(), 0o755)
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

// tarEntry is one file of a package's data.
func TestPresetEnablesInstallableUnits(t *testing.T) {
	units, err := findUnits("testdata/systemd/units", false)
	require.NoError(t, err)
	b := &builder{units: units}
	// The fixture's metadata service is socket-activated: no [Install].
	assert.Equal(t, "# nodetrust-server: enable on install, start once configured (docs/packaging.md)\n"+
		"enable nodetrust-controlplane.service\nenable nodetrust-metadata.socket\nenable nodetrust-signer.service\n",
		b.preset(ServerPackage))
}

// stubEnv runs a maintainer script with every command it may call
// replaced by a stub that logs its arguments, and returns the log.
// stubScriptEnv is stubScript with extra environment variables; the
// dpkg-query stub prints $DPKG_QUERY_STATUS.
// stubScriptWithout is stubScriptEnv without the stubs named in omit (so
// the script finds no such command: PATH then holds the stubs only).
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

// TestStandInBinary makes sure the stand-in is a real executable.
func TestStandInBinary(t *testing.T) {
	bin, err := fakeBinary(t.TempDir())
	require.NoError(t, err)
	require.NoError(t, exec.Command(bin).Run())
}

// TestNotInShippedBinary keeps nfpm (and this package) out of the binary
// the packages ship.
func TestNotInShippedBinary(t *testing.T) {
	needTool(t, "go")
	out, err := exec.Command("go", "list", "-deps", "../cmd/nodetrust").CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, dep := range strings.Fields(string(out)) {
		assert.False(t, strings.Contains(dep, "goreleaser/nfpm") || strings.HasSuffix(dep, "/nodetrust/packaging"),
			"cmd/nodetrust links %s", dep)
	}
}
