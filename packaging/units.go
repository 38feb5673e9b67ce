package packaging

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// ErrMissingUnit is wrapped when a unit file a package needs is not in
// systemd/units.
var ErrMissingUnit = errors.New("unit file missing")

// Unit is a systemd unit file from systemd/units.
type Unit struct {
	Name   string // file name, e.g. nodetrust-agent.service
	Source string // path of the file
	// Enable is true when the unit has an [Install] section, so that
	// enabling it means something.
	Enable bool
}

// requiredUnits are the units each package must ship; a build without one
// of them fails (unless Options.AllowMissingUnits).
var requiredUnits = map[string][]string{
	AgentPackage:  {"nodetrust-agent.service"},
	ServerPackage: {"nodetrust-metadata.service", "nodetrust-metadata.socket", "nodetrust-controlplane.service", "nodetrust-signer.service"},
}

// unitPrefixes place a unit found in systemd/units that requiredUnits does
// not name (a target or a helper service added later) in a package.
var unitPrefixes = []struct{ prefix, pkg string }{
	{"nodetrust-agent", AgentPackage},
	{"nodetrust-online", AgentPackage},
	{"nodetrust-wait-online", AgentPackage},
	{"nodetrust-metadata", ServerPackage},
	{"nodetrust-controlplane", ServerPackage},
	{"nodetrust-signer", ServerPackage},
}

var unitSuffixes = []string{".service", ".socket", ".target", ".timer", ".path"}

// findUnits lists dir (systemd/units) and sorts its unit files into
// packages. A unit file no package claims is an error, so a new unit is
// never left out silently; other files (README, drop-in folders) are
// ignored.
func findUnits(dir string, allowMissing bool) (map[string][]Unit, error) {
	entries, err := os.ReadDir(dir)
	if err != nil && !(allowMissing && errors.Is(err, os.ErrNotExist)) {
		return nil, fmt.Errorf("read unit folder %s: %w (the systemd units are packaged from there)", dir, err)
	}
	byPkg := map[string][]Unit{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !slices.ContainsFunc(unitSuffixes, func(s string) bool { return strings.HasSuffix(name, s) }) {
			continue
		}
		pkg := ""
		for _, p := range unitPrefixes {
			if strings.HasPrefix(name, p.prefix) {
				pkg = p.pkg
				break
			}
		}
		if pkg == "" {
			return nil, fmt.Errorf("unit %s in %s belongs to no package: add its prefix to unitPrefixes in packaging/units.go", name, dir)
		}
		src := filepath.Join(dir, name)
		install, err := hasInstallSection(src)
		if err != nil {
			return nil, err
		}
		byPkg[pkg] = append(byPkg[pkg], Unit{Name: name, Source: src, Enable: install})
	}
	var missing []string
	for pkg, names := range requiredUnits {
		for _, n := range names {
			if !slices.ContainsFunc(byPkg[pkg], func(u Unit) bool { return u.Name == n }) {
				missing = append(missing, n)
			}
		}
	}
	if len(missing) > 0 && !allowMissing {
		slices.Sort(missing)
		return nil, fmt.Errorf("%w in %s: %s (write them, or build with -allow-missing-units for a test build)",
			ErrMissingUnit, dir, strings.Join(missing, ", "))
	}
	return byPkg, nil
}

// hasInstallSection reports whether a unit file has an [Install] section
// with at least one setting.
func hasInstallSection(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("read unit: %w", err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			in = line == "[Install]"
		case in && strings.Contains(line, "="):
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read unit %s: %w", path, err)
	}
	return false, nil
}

// SystemdConf is a sysusers.d or tmpfiles.d file from systemd/.
type SystemdConf struct {
	Source string
	Dest   string // e.g. /usr/lib/sysusers.d/nodetrust.conf
}

// findConfs returns the *.conf files of root/sysusers.d and
// root/tmpfiles.d, and the system users the sysusers.d files declare.
func findConfs(root string) (confs []SystemdConf, users []string, err error) {
	for _, kind := range []string{"sysusers.d", "tmpfiles.d"} {
		matches, err := filepath.Glob(filepath.Join(root, kind, "*.conf"))
		if err != nil {
			return nil, nil, err
		}
		slices.Sort(matches)
		for _, m := range matches {
			confs = append(confs, SystemdConf{Source: m, Dest: "/usr/lib/" + kind + "/" + filepath.Base(m)})
			if kind != "sysusers.d" {
				continue
			}
			u, err := sysusersUsers(m)
			if err != nil {
				return nil, nil, err
			}
			users = append(users, u...)
		}
	}
	return confs, users, nil
}

// sysusersUsers returns the names of the "u" lines of a sysusers.d file.
func sysusersUsers(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read sysusers file: %w", err)
	}
	var users []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "u" || f[0] == "u!") {
			users = append(users, f[1])
		}
	}
	return users, nil
}
