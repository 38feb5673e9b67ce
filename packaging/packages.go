package packaging

import (
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/files"
	"gopkg.in/yaml.v3"
)

// The packages, in build order.
const (
	CommonPackage = "nodetrust"
	AgentPackage  = "nodetrust-agent"
	ServerPackage = "nodetrust-server"
)

// Packages lists every package Build makes in each format.
var Packages = []string{CommonPackage, AgentPackage, ServerPackage}

const (
	maintainer = "nodetrust maintainers <maintainers@nodetrust.example>"
	homepage   = "https://github.com/nodetrust/nodetrust"
	license    = "Apache-2.0"
	buildHost  = "nodetrust-build" // fixed, so rpm headers do not vary by machine
)

//go:embed files scripts
var embedded embed.FS

// description is the one-line summary and the long description of each
// package.
var description = map[string][2]string{
	CommonPackage: {"Node identity for VM fleets: binary, manual and system users",
		"nodetrust gives each VM a Kubernetes node identity from a bootstrap secret\n" +
			"in its metadata: an agent, a GCE-compatible metadata server and a control\n" +
			"plane in one binary. This package holds the binary, its manual page and the\n" +
			"system users; install nodetrust-agent on nodes and nodetrust-server on the\n" +
			"control plane."},
	AgentPackage: {"Node identity for VM fleets: the node agent service",
		"The nodetrust agent turns the bootstrap secret in a VM's metadata into a\n" +
			"node identity (CSR, credentials, rotation, reverse tunnels). This package\n" +
			"holds its systemd unit and /etc/nodetrust/agent.yaml; the service is\n" +
			"enabled on install and starts once the configuration names the server."},
	ServerPackage: {"Node identity for VM fleets: metadata server and control plane services",
		"The server side of nodetrust: the GCE-compatible metadata server (socket\n" +
			"activated), the control plane API and its separate certificate signer,\n" +
			"as systemd units with example configuration."},
}

// builder holds what every package of one Build shares.
type builder struct {
	opts    Options
	version string // package version, without the release
	units   map[string][]Unit
	confs   []SystemdConf
	stage   string // scratch folder for generated files
}

// debVersion and rpmVersion are the full versions the other packages
// depend on exactly.
func (b *builder) fullVersion() string { return b.version + "-" + b.opts.Release }

// info describes one package in one format.
func (b *builder) info(name, format string) (*nfpm.Info, error) {
	desc := description[name]
	arch := b.opts.Arch
	if name != CommonPackage {
		// Units and configuration only: one package fits every
		// architecture (deb "all", rpm "noarch").
		arch = "all"
	}
	info := &nfpm.Info{
		Name:          name,
		Arch:          arch,
		Platform:      "linux",
		Version:       b.version,
		VersionSchema: "none",
		Release:       b.opts.Release,
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    maintainer,
		Description:   desc[0] + "\n" + desc[1],
		Vendor:        "nodetrust",
		Homepage:      homepage,
		License:       license,
		MTime:         b.opts.Epoch,
	}
	info.RPM.Summary = desc[0]
	info.RPM.Group = "System Environment/Daemons"
	info.RPM.BuildHost = buildHost
	info.RPM.Packager = maintainer

	c, err := b.contents(name, format)
	if err != nil {
		return nil, err
	}
	info.Contents = c

	if format == "deb" && slices.ContainsFunc(b.confs, func(c SystemdConf) bool { return c.Package == name && len(c.Users) > 0 }) {
		// postinst falls back to adduser without systemd-sysusers.
		info.Depends = append(info.Depends, "adduser")
	}
	switch name {
	case CommonPackage:
	default:
		if format == "deb" {
			// init-system-helpers (deb-systemd-helper) is essential.
			info.Depends = append(info.Depends, fmt.Sprintf("%s (= %s)", CommonPackage, b.fullVersion()))
		} else {
			info.Depends = append(info.Depends, fmt.Sprintf("%s = %s", CommonPackage, b.fullVersion()))
		}
	}

	cl, err := b.changelog(name, format)
	if err != nil {
		return nil, err
	}
	info.Changelog = cl

	if err := b.scripts(info, name, format); err != nil {
		return nil, err
	}
	return info, nil
}

// file is a content entry with explicit owner and mode, so nothing depends
// on the checkout's permissions or the builder's umask.
func file(src, dst string, mode os.FileMode) *files.Content {
	return &files.Content{Source: src, Destination: dst, Type: files.TypeFile,
		FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode}}
}

// doc marks documentation as %doc in the rpm.
func doc(c *files.Content, format string) *files.Content {
	if format == "rpm" {
		c.Type = files.TypeRPMDoc
	}
	return c
}

// lintianOverrides renders files/lintian-overrides for one package: the
// lines for every package, and those naming this one.
func (b *builder) lintianOverrides(name string) (string, error) {
	src, err := embedded.ReadFile("files/lintian-overrides")
	if err != nil {
		return "", err
	}
	t, err := template.New("lintian-overrides").Parse(string(src))
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, struct{ Package string }{name}); err != nil {
		return "", err
	}
	p := filepath.Join(b.stage, name+"-lintian-overrides")
	return p, os.WriteFile(p, buf.Bytes(), 0o644)
}

// contents lists the files of one package in one format.
func (b *builder) contents(name, format string) (files.Contents, error) {
	var c files.Contents
	docDir := "/usr/share/doc/" + name
	copyright, err := b.extract("files/copyright", name+"-copyright")
	if err != nil {
		return nil, err
	}
	c = append(c, doc(file(copyright, docDir+"/copyright", 0o644), format))
	if format == "deb" {
		ov, err := b.lintianOverrides(name)
		if err != nil {
			return nil, err
		}
		c = append(c, file(ov, "/usr/share/lintian/overrides/"+name, 0o644))
	}

	for _, conf := range b.confs {
		if conf.Package == name {
			c = append(c, file(conf.Source, conf.Dest, 0o644))
		}
	}
	for _, page := range manPages[name] {
		gz, err := b.gzipped("files/man/"+page, page+".gz")
		if err != nil {
			return nil, err
		}
		section := page[strings.LastIndexByte(page, '.')+1:]
		c = append(c, doc(file(gz, "/usr/share/man/man"+section+"/"+page+".gz", 0o644), format))
	}

	switch name {
	case CommonPackage:
		c = append(c, file(b.opts.Binary, "/usr/bin/nodetrust", 0o755))
	case AgentPackage, ServerPackage:
		for _, u := range b.units[name] {
			c = append(c, file(u.Source, "/usr/lib/systemd/system/"+u.Name, 0o644))
		}
		// Presets matter to rpm's %post (systemctl preset) only; Debian
		// enables with deb-systemd-helper.
		if preset := b.preset(name); preset != "" && format == "rpm" {
			p := filepath.Join(b.stage, name+".preset")
			if err := os.WriteFile(p, []byte(preset), 0o644); err != nil {
				return nil, err
			}
			c = append(c, file(p, "/usr/lib/systemd/system-preset/90-"+name+".preset", 0o644))
		}
		for _, cf := range configFiles[name] {
			src, err := b.extract("files/etc/"+cf.src, name+"-"+cf.src)
			if err != nil {
				return nil, err
			}
			e := file(src, cf.dst, 0o644)
			e.Type = files.TypeConfigNoReplace
			c = append(c, e)
		}
		if format == "rpm" {
			// Owned folders get their SELinux labels at install time
			// (one systemd makes later may not), with the owner and
			// mode the unit gives them, so an upgrade changes nothing.
			for _, d := range b.dirs(name) {
				c = append(c, &files.Content{Destination: d.Path, Type: files.TypeDir,
					FileInfo: &files.ContentFileInfo{Owner: d.Owner, Group: d.Group, Mode: d.Mode}})
			}
		}
	}
	return c, nil
}

// manPages are each package's manual pages, from packaging/files/man.
var manPages = map[string][]string{
	CommonPackage: {"nodetrust.8"},
	AgentPackage:  {"nodetrust-agent.yaml.5"},
}

// configFiles are each package's conffiles (dpkg) / %config(noreplace)
// files (rpm), shipped from packaging/files/etc.
var configFiles = map[string][]configFile{
	AgentPackage: {{"agent.yaml", "/etc/nodetrust/agent.yaml"}},
	ServerPackage: {
		{"nodetrust-controlplane.default", "/etc/default/nodetrust-controlplane"},
		// An example, not the data file itself: the metadata server
		// would serve any instances it found at the real path.
		{"metadata.yaml.example", "/etc/nodetrust/metadata.yaml.example"},
	},
}

// configFile is a file of packaging/files/etc and where it is installed.
type configFile struct{ src, dst string }

// dirs are the folders the units of a package have systemd make
// (StateDirectory= and the like): the rpm owns them, and the deb's purge
// deletes them.
func (b *builder) dirs(name string) []Dir {
	var ds []Dir
	seen := map[string]bool{}
	for _, u := range b.units[name] {
		for _, d := range u.Dirs {
			if !seen[d.Path] {
				seen[d.Path] = true
				ds = append(ds, d)
			}
		}
	}
	slices.SortFunc(ds, func(a, b Dir) int { return strings.Compare(a.Path, b.Path) })
	return ds
}

// dataDirs are the /var/lib folders a package's units write that a
// command makes (ReadWritePaths=), outermost only: the deb's purge moves
// them to /var/backups, as they may hold a CA key.
func (b *builder) dataDirs(name string) []string {
	var all []string
	for _, u := range b.units[name] {
		all = append(all, u.DataDirs...)
	}
	slices.Sort(all)
	all = slices.Compact(all)
	var out []string
	for _, d := range all {
		if !slices.ContainsFunc(out, func(o string) bool { return strings.HasPrefix(d, o+"/") }) {
			out = append(out, d)
		}
	}
	return out
}

// purgeDir is a folder the deb's purge deletes. SameAs are the other
// packages whose units use the very same folder: it goes with the last of
// them. Others use folders inside it, named in Keep: while one of those
// packages has state, purge deletes everything else.
type purgeDir struct {
	Path   string
	SameAs []string
	Others []string
	Keep   []string // first-level names inside Path
	Parent string   // the folder Path is inside of another package's, if any
}

func (b *builder) purgeDirs(name string) []purgeDir {
	var out []purgeDir
	for _, d := range b.dirs(name) {
		pd := purgeDir{Path: d.Path}
		for _, other := range Packages {
			if other == name {
				continue
			}
			for _, e := range b.dirs(other) {
				switch {
				case e.Path == d.Path:
					if !slices.Contains(pd.SameAs, other) {
						pd.SameAs = append(pd.SameAs, other)
					}
				case strings.HasPrefix(e.Path, d.Path+"/"):
					first, _, _ := strings.Cut(strings.TrimPrefix(e.Path, d.Path+"/"), "/")
					if !slices.Contains(pd.Keep, first) {
						pd.Keep = append(pd.Keep, first)
					}
					if !slices.Contains(pd.Others, other) {
						pd.Others = append(pd.Others, other)
					}
				case strings.HasPrefix(d.Path, e.Path+"/"):
					pd.Parent = e.Path
				}
			}
		}
		out = append(out, pd)
	}
	return out
}

// preset is the systemd preset file that enables a package's units on
// distributions that apply presets (rpm %post runs systemctl preset).
func (b *builder) preset(name string) string {
	var sb strings.Builder
	for _, u := range b.units[name] {
		if u.Enable {
			fmt.Fprintf(&sb, "enable %s\n", u.Name)
		}
	}
	if sb.Len() == 0 {
		return ""
	}
	return "# " + name + ": enable on install, start once configured (docs/packaging.md)\n" + sb.String()
}

// extract copies an embedded file into the stage folder and returns its
// path there.
func (b *builder) extract(embedPath, stageName string) (string, error) {
	data, err := embedded.ReadFile(embedPath)
	if err != nil {
		return "", err
	}
	p := filepath.Join(b.stage, stageName)
	return p, os.WriteFile(p, data, 0o644)
}

// gzipped compresses an embedded file as gzip -9n would: best compression,
// no name and no time stamp, so the result depends on the content only.
func (b *builder) gzipped(embedPath, stageName string) (string, error) {
	data, err := embedded.ReadFile(embedPath)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return "", err
	}
	if _, err := zw.Write(data); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	p := filepath.Join(b.stage, stageName)
	return p, os.WriteFile(p, buf.Bytes(), 0o644)
}

// changelogEntry is one entry of nfpm's changelog format (chglog YAML).
type changelogEntry struct {
	Semver   string          `yaml:"semver"`
	Date     time.Time       `yaml:"date"`
	Packager string          `yaml:"packager"`
	Deb      *changelogDeb   `yaml:"deb,omitempty"`
	Changes  []changelogNote `yaml:"changes"`
}

type changelogDeb struct {
	Urgency       string   `yaml:"urgency"`
	Distributions []string `yaml:"distributions"`
}

type changelogNote struct {
	Commit string `yaml:"commit"`
	Note   string `yaml:"note"`
}

// changelog writes the package's changelog (one entry: this build) for
// nfpm, which makes changelog.Debian.gz of it for deb and %changelog for
// rpm.
func (b *builder) changelog(name, format string) (string, error) {
	e := changelogEntry{
		Semver:   b.fullVersion(),
		Date:     b.opts.Epoch,
		Packager: maintainer,
		Changes: []changelogNote{{Note: fmt.Sprintf("Build of nodetrust %s; the changes are in the project's history.",
			b.opts.Version)}},
	}
	if format == "deb" {
		e.Deb = &changelogDeb{Urgency: "medium", Distributions: []string{"unstable"}}
	} else {
		e.Semver = rpmChangelogVersion(b.version, b.opts.Release)
	}
	data, err := yaml.Marshal([]changelogEntry{e})
	if err != nil {
		return "", err
	}
	p := filepath.Join(b.stage, name+"-"+format+"-changelog.yaml")
	return p, os.WriteFile(p, data, 0o644)
}

// rpmChangelogVersion is the version nfpm's rpm changelog template can
// parse (it wants semver, it prints major.minor.patch-prerelease): for a
// release, version-release as rpm spells it.
func rpmChangelogVersion(version, release string) string {
	v, pre, _ := strings.Cut(strings.ReplaceAll(version, "+", "~"), "~")
	for strings.Count(v, ".") < 2 {
		v += ".0"
	}
	if pre != "" {
		return v + "-" + strings.ReplaceAll(pre, "~", ".") + "." + release
	}
	return v + "-" + release
}

// scriptData fills the maintainer script templates.
type scriptData struct {
	Package     string
	Units       []string // every unit of the package
	EnableUnits []string // those with an [Install] section
	// RestartUnits are the services, restarted on upgrade; a socket
	// keeps listening (its service holds the same socket), and a
	// target has nothing to restart.
	RestartUnits  []string
	Users         []string    // system users the package creates
	Members       [][2]string // and the groups they join: {user, group}
	SysusersFiles []string    // their sysusers.d file names
	Sysusers      []sysusersFile
	Tmpfiles      []string // tmpfiles.d file names to apply after install
	PurgeDirs     []purgeDir
	BackupDirs    []string // moved to /var/backups on purge
}

// sysusersFile is a sysusers.d file inlined in rpm's %pre.
type sysusersFile struct{ Dest, Content string }

// scripts renders the maintainer scripts of one package for one format.
func (b *builder) scripts(info *nfpm.Info, name, format string) error {
	d := scriptData{Package: name, PurgeDirs: b.purgeDirs(name), BackupDirs: b.dataDirs(name)}
	for _, u := range b.units[name] {
		d.Units = append(d.Units, u.Name)
		if u.Enable {
			d.EnableUnits = append(d.EnableUnits, u.Name)
		}
		if strings.HasSuffix(u.Name, ".service") {
			d.RestartUnits = append(d.RestartUnits, u.Name)
		}
	}
	for _, c := range b.confs {
		if c.Package != name {
			continue
		}
		if strings.HasPrefix(c.Dest, "/usr/lib/tmpfiles.d/") {
			d.Tmpfiles = append(d.Tmpfiles, path.Base(c.Dest))
			continue
		}
		d.Users = append(d.Users, c.Users...)
		d.Members = append(d.Members, c.Members...)
		d.SysusersFiles = append(d.SysusersFiles, path.Base(c.Dest))
		data, err := os.ReadFile(c.Source)
		if err != nil {
			return err
		}
		content := string(data)
		if !strings.HasSuffix(content, "\n") {
			content += "\n"
		}
		d.Sysusers = append(d.Sysusers, sysusersFile{Dest: c.Dest, Content: content})
	}
	render := func(tmpl string) (string, error) {
		if tmpl == "" {
			return "", nil
		}
		src, err := embedded.ReadFile("scripts/" + format + "/" + tmpl)
		if err != nil {
			return "", err
		}
		t, err := template.New(tmpl).Funcs(template.FuncMap{"join": func(s []string) string { return strings.Join(s, " ") }, "base": path.Base}).
			Option("missingkey=error").Parse(string(src))
		if err != nil {
			return "", fmt.Errorf("script template %s/%s: %w", format, tmpl, err)
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, d); err != nil {
			return "", fmt.Errorf("script template %s/%s: %w", format, tmpl, err)
		}
		p := filepath.Join(b.stage, name+"-"+format+"-"+tmpl)
		return p, os.WriteFile(p, buf.Bytes(), 0o755)
	}
	// Every package creates its users (deb: postinst, rpm: %pre, before
	// the folders they own are unpacked) and applies its tmpfiles.d;
	// the agent and server packages manage their units.
	names := map[string][4]string{ // preinstall, postinstall, preremove, postremove
		"deb": {"", "postinst", "prerm", "postrm"},
		"rpm": {"", "post", "preun", "postun"},
	}[format]
	if format == "rpm" && len(d.Sysusers) > 0 {
		names[0] = "pre"
	}
	if len(d.Units) == 0 {
		names[2], names[3] = "", ""
		if len(d.Tmpfiles) == 0 && (format == "rpm" || len(d.Users) == 0) {
			names[1] = ""
		}
	}
	var err error
	if info.Scripts.PreInstall, err = render(names[0]); err != nil {
		return err
	}
	if info.Scripts.PostInstall, err = render(names[1]); err != nil {
		return err
	}
	if info.Scripts.PreRemove, err = render(names[2]); err != nil {
		return err
	}
	if info.Scripts.PostRemove, err = render(names[3]); err != nil {
		return err
	}
	return nil
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
