//go:build linux

package machine

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/nodetrust/nodetrust/packaging"
)

// ModuleRoot is the repository root, found from the working directory
// (a test runs in its package folder).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// BuildBinary builds ./cmd/nodetrust of root with version stamped in, into
// dir/nodetrust-<version>. It compiles with the flags test/e2e uses (no
// -trimpath, which would change every package's cache key), so the two
// packages share the compiled dependencies and a second version is only a
// link.
func BuildBinary(root, dir, version string) (string, error) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	out := filepath.Join(dir, "nodetrust-"+version)
	cmd := exec.Command(goBin, "build",
		"-ldflags", "-s -w -X github.com/nodetrust/nodetrust/internal/version.Version="+version,
		"-o", out, "./cmd/nodetrust")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/nodetrust (version %s): %w\n%s", version, err, b)
	}
	return out, nil
}

// Packages are the package files of one version, by package and format.
type Packages struct {
	Version string
	Dir     string
	Files   map[string]string // "nodetrust-agent.deb" -> path
}

// Path is the file of package name in format ("deb" or "rpm").
func (p *Packages) Path(name, format string) string { return p.Files[name+"."+format] }

// BuildPackages builds the deb and rpm packages of bin as `make package`
// does (packaging.Build with the units of root/systemd) into dir.
func BuildPackages(root, bin, version, dir string) (*Packages, error) {
	arts, err := packaging.Build(packaging.Options{
		Root: root, Binary: bin, Version: version, OutDir: dir,
		Epoch: time.Unix(1_700_000_000, 0),
	})
	if err != nil {
		return nil, fmt.Errorf("build the %s packages: %w", version, err)
	}
	p := &Packages{Version: version, Dir: dir, Files: map[string]string{}}
	for _, a := range arts {
		p.Files[a.Package+"."+a.Format] = a.Path
	}
	return p, nil
}
