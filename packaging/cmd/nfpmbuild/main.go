// Command nfpmbuild builds nodetrust's deb and rpm packages from a built
// binary and the units in systemd/units; `make package` runs it. It is a
// build tool, not part of the shipped binary.
//
// Example:
//
//	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) go run ./packaging/cmd/nfpmbuild \
//	    -bin bin/nodetrust -version 1.2.3 -out dist
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nodetrust/nodetrust/packaging"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "nfpmbuild: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("nfpmbuild", flag.ContinueOnError)
	root := fs.String("root", ".", "repository root (units come from ROOT/systemd)")
	bin := fs.String("bin", "bin/nodetrust", "the nodetrust binary to package")
	version := fs.String("version", "", "build version, e.g. 1.2.3 or git describe output (required)")
	release := fs.String("release", "1", "package revision")
	arch := fs.String("arch", "amd64", "Go architecture of the binary")
	out := fs.String("out", "dist", "output folder")
	formats := fs.String("formats", strings.Join(packaging.Formats, ","), "comma-separated formats")
	allowMissing := fs.Bool("allow-missing-units", false, "build even when a unit file is missing (test builds only)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: nfpmbuild -bin BIN -version VERSION [-out DIR]\n\n"+
			"Builds the nodetrust, nodetrust-agent and nodetrust-server packages; every\n"+
			"timestamp is SOURCE_DATE_EPOCH, which must be set.\n\nExample:\n"+
			"  SOURCE_DATE_EPOCH=$(git log -1 --format=%%ct) nfpmbuild -bin bin/nodetrust -version 1.2.3 -out dist\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	arts, err := packaging.Build(packaging.Options{
		Root: *root, Binary: *bin, Version: *version, Release: *release, Arch: *arch,
		OutDir: *out, Formats: strings.Split(*formats, ","), AllowMissingUnits: *allowMissing,
	})
	if err != nil {
		return err
	}
	var sums strings.Builder
	for _, a := range arts {
		sum, err := sha256File(a.Path)
		if err != nil {
			return err
		}
		fmt.Fprintf(&sums, "%s  %s\n", sum, filepath.Base(a.Path))
		fmt.Fprintf(stdout, "%s  %s\n", sum, a.Path)
	}
	return os.WriteFile(filepath.Join(*out, "SHA256SUMS"), []byte(sums.String()), 0o644)
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
