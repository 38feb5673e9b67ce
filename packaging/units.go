package packaging

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
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
	// Dirs are the folders systemd makes for the unit (StateDirectory=,
	// CacheDirectory=, LogsDirectory=), with the unit's User= and Group=
	// and the configured mode.
	Dirs []Dir
	// User is the unit's User= (empty: root).
	User string
	// DataDirs are the unit's ReadWritePaths= under /var/lib: data that
	// a command makes (controlplane init), not systemd.
	DataDirs []string
}

// Dir is a folder under /var that a unit's service owns.
type Dir struct {
	Path         string
	Owner, Group string
	Mode         os.FileMode
}

// unitDirKinds maps a unit's folder setting to the base of its folders.
var unitDirKinds = []struct{ key, base string }{
	{"StateDirectory", "/var/lib/"},
	{"CacheDirectory", "/var/cache/"},
	{"LogsDirectory", "/var/log/"},
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
		u, err := readUnit(src)
		if err != nil {
			return nil, err
		}
		u.Name = name
		byPkg[pkg] = append(byPkg[pkg], u)
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

// readUnit reads what packaging needs from a unit file: whether it has an
// [Install] section, and the folders systemd makes for it.
func readUnit(file string) (Unit, error) {
	u := Unit{Source: file}
	f, err := os.Open(file)
	if err != nil {
		return u, fmt.Errorf("read unit: %w", err)
	}
	defer f.Close()
	section := ""
	svc := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Install]" && strings.Contains(line, "="):
			u.Enable = true
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if ok {
				svc[strings.TrimSpace(k)] = strings.TrimSpace(v) // the last setting wins
			}
		}
	}
	if err := sc.Err(); err != nil {
		return u, fmt.Errorf("read unit %s: %w", file, err)
	}
	for _, rw := range strings.Fields(svc["ReadWritePaths"]) {
		rw = strings.TrimLeft(rw, "-+")
		if strings.HasPrefix(rw, "/var/lib/") {
			u.DataDirs = append(u.DataDirs, path.Clean(rw))
		}
	}
	u.User = svc["User"]
	owner := cmp.Or(svc["User"], "root")
	group := cmp.Or(svc["Group"], owner)
	for _, k := range unitDirKinds {
		mode := os.FileMode(0o755)
		if m := svc[k.key+"Mode"]; m != "" {
			n, err := strconv.ParseUint(m, 8, 32)
			if err != nil {
				return u, fmt.Errorf("unit %s: %sMode=%q is not an octal mode", file, k.key, m)
			}
			mode = os.FileMode(n)
		}
		for _, d := range strings.Fields(svc[k.key]) {
			d, _, _ = strings.Cut(d, ":") // DIR:SYMLINK (systemd 250+)
			u.Dirs = append(u.Dirs, Dir{Path: k.base + d, Owner: owner, Group: group, Mode: mode})
		}
	}
	return u, nil
}

// SystemdConf is a sysusers.d or tmpfiles.d file from systemd/.
type SystemdConf struct {
	Source  string
	Dest    string   // e.g. /usr/lib/sysusers.d/nodetrust.conf
	Package string   // the package that ships it, by its file name
	Users   []string // sysusers.d: the users it declares
	// Members are its "m USER GROUP" lines, as {user, group}.
	Members [][2]string
}

// confPackage places a sysusers.d or tmpfiles.d file by its name:
// nodetrust-agent*.conf in the agent package, nodetrust-server*.conf in
// the server package, anything else in the common package.
func confPackage(file string) string {
	switch {
	case strings.HasPrefix(file, AgentPackage):
		return AgentPackage
	case strings.HasPrefix(file, ServerPackage):
		return ServerPackage
	}
	return CommonPackage
}

// findConfs returns the *.conf files of root/sysusers.d and
// root/tmpfiles.d.
func findConfs(root string) ([]SystemdConf, error) {
	var confs []SystemdConf
	for _, kind := range []string{"sysusers.d", "tmpfiles.d"} {
		matches, err := filepath.Glob(filepath.Join(root, kind, "*.conf"))
		if err != nil {
			return nil, err
		}
		slices.Sort(matches)
		for _, m := range matches {
			c := SystemdConf{Source: m, Dest: "/usr/lib/" + kind + "/" + filepath.Base(m), Package: confPackage(filepath.Base(m))}
			if kind == "sysusers.d" {
				if c.Users, c.Members, err = sysusersUsers(m); err != nil {
					return nil, err
				}
			}
			confs = append(confs, c)
		}
	}
	return confs, nil
}

// sysusersUsers returns the users ("u" lines) and group memberships ("m"
// lines) of a sysusers.d file.
func sysusersUsers(file string) (users []string, members [][2]string, err error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("read sysusers file: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && (f[0] == "u" || f[0] == "u!"):
			users = append(users, f[1])
		case len(f) >= 3 && f[0] == "m":
			members = append(members, [2]string{f[1], f[2]})
		}
	}
	return users, members, nil
}
