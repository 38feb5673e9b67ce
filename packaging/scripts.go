package packaging

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/goreleaser/nfpm/v2"
)

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
