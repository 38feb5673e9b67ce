package packaging

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

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
