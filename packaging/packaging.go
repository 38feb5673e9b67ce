// Package packaging builds nodetrust's deb and rpm packages with nfpm used
// as a library: nodetrust (the binary and its manual), nodetrust-agent (the
// node agent's unit, user and configuration) and nodetrust-server
// (metadata server, control plane and signer units, users and
// configuration), each with maintainer scripts per format. Builds are reproducible: every
// timestamp is Options.Epoch (SOURCE_DATE_EPOCH). It is a build tool: the
// shipped binary never links it.
package packaging

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
	"github.com/nodetrust/nodetrust/internal/atomicfile"
)

// Formats are the package formats Build makes by default.
var Formats = []string{"deb", "rpm"}

// Options says what to build from where.
type Options struct {
	// Root is the repository root; the units come from Root/systemd.
	Root string
	// Binary is the nodetrust binary to ship (built with CGO_ENABLED=0).
	Binary string
	// Version is the build version (VERSION in the Makefile); see
	// PackageVersion for how it becomes the package version.
	Version string
	// Release is the package revision (default "1").
	Release string
	// Arch is the Go architecture (default amd64).
	Arch string
	// OutDir receives the packages.
	OutDir string
	// Formats to build (default Formats).
	Formats []string
	// Epoch is the time stamped on every file and in the package
	// headers; zero means SOURCE_DATE_EPOCH, which must then be set.
	Epoch time.Time
	// AllowMissingUnits builds even when a unit file is missing from
	// systemd/units or a unit's user from systemd/sysusers.d (for tests
	// and early builds).
	AllowMissingUnits bool
}

// ErrUndeclaredUser is wrapped when a unit runs as a user that no
// sysusers.d file declares.
var ErrUndeclaredUser = errors.New("unit user not declared")

// checkUsers makes sure every User= of the units is created by a package
// that is installed with it: its own or the common one.
func checkUsers(units map[string][]Unit, confs []SystemdConf) error {
	for pkg, us := range units {
		for _, u := range us {
			if u.User == "" || u.User == "root" {
				continue
			}
			if !slices.ContainsFunc(confs, func(c SystemdConf) bool {
				return (c.Package == pkg || c.Package == CommonPackage) && slices.Contains(c.Users, u.User)
			}) {
				return fmt.Errorf("%w: %s runs as User=%s, which no systemd/sysusers.d/*.conf of %s or %s declares (nodetrust-agent*.conf, nodetrust-server*.conf or nodetrust.conf)",
					ErrUndeclaredUser, u.Name, u.User, pkg, CommonPackage)
			}
		}
	}
	return nil
}

// Artifact is one package file Build wrote.
type Artifact struct {
	Package string // nodetrust, nodetrust-agent, nodetrust-server
	Format  string // deb or rpm
	Path    string
}

// Build writes every package in every format to opts.OutDir and returns
// them in a stable order.
func Build(opts Options) ([]Artifact, error) {
	opts.Release = cmp.Or(opts.Release, "1")
	opts.Arch = cmp.Or(opts.Arch, "amd64")
	if len(opts.Formats) == 0 {
		opts.Formats = Formats
	}
	if opts.Epoch.IsZero() {
		e, err := EpochFromEnv()
		if err != nil {
			return nil, err
		}
		opts.Epoch = e
	}
	opts.Epoch = opts.Epoch.UTC()
	if opts.Binary == "" {
		return nil, errors.New("no binary to package: pass -bin bin/nodetrust")
	}
	if _, err := os.Stat(opts.Binary); err != nil {
		return nil, fmt.Errorf("binary to package: %w (run make build first)", err)
	}
	version, err := PackageVersion(opts.Version)
	if err != nil {
		return nil, err
	}
	units, err := findUnits(filepath.Join(opts.Root, "systemd", "units"), opts.AllowMissingUnits)
	if err != nil {
		return nil, err
	}
	confs, err := findConfs(filepath.Join(opts.Root, "systemd"))
	if err != nil {
		return nil, err
	}
	if !opts.AllowMissingUnits {
		if err := checkUsers(units, confs); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("output folder: %w", err)
	}
	stage, err := os.MkdirTemp("", "nodetrust-packaging-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)

	b := &builder{opts: opts, version: version, units: units, confs: confs, stage: stage}
	var out []Artifact
	for _, format := range opts.Formats {
		for _, name := range Packages {
			a, err := b.build(name, format)
			if err != nil {
				return nil, fmt.Errorf("build %s %s: %w", name, format, err)
			}
			out = append(out, a)
		}
	}
	return out, nil
}

// build makes one package file.
func (b *builder) build(name, format string) (Artifact, error) {
	info, err := b.info(name, format)
	if err != nil {
		return Artifact{}, err
	}
	pkgr, err := nfpm.Get(format)
	if err != nil {
		return Artifact{}, err
	}
	info = nfpm.WithDefaults(info)
	// ConventionalFileName rewrites fields (the rpm architecture), so it
	// gets a copy.
	fileInfo := *info
	path := filepath.Join(b.opts.OutDir, pkgr.ConventionalFileName(&fileInfo))
	var pkg bytes.Buffer
	if err := pkgr.Package(info, &pkg); err != nil {
		return Artifact{}, err
	}
	if err := atomicfile.WriteVolatile(path, pkg.Bytes(), 0o644); err != nil {
		return Artifact{}, err
	}
	return Artifact{Package: name, Format: format, Path: path}, nil
}

// EpochFromEnv reads SOURCE_DATE_EPOCH (seconds since 1970).
func EpochFromEnv() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH is not set: set it, e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%%ct)")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds since 1970", s)
	}
	return time.Unix(n, 0).UTC(), nil
}
