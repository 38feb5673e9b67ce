package packaging

import (
	"slices"
	"strings"
)

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
