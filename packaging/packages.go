package packaging

import (
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/template"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/files"
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
