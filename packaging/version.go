package packaging

import (
	"fmt"
	"regexp"
	"strings"
)

var (
	plainVersion    = regexp.MustCompile(`^v?([0-9]+(\.[0-9]+)*)$`)
	preVersion      = regexp.MustCompile(`^v?([0-9]+(\.[0-9]+)*)-((alpha|beta|rc|pre)[0-9.]*)$`)
	describeVersion = regexp.MustCompile(`^v?([0-9]+(\.[0-9]+)*)-([0-9]+)-g([0-9a-f]+)(-dirty)?$`)
	unsafeChars     = regexp.MustCompile(`[^A-Za-z0-9.+~]+`)
)

// PackageVersion turns a build version (VERSION in the Makefile: a release
// such as 1.2.3 or v1.2.3, or whatever git describe says) into a version
// both dpkg and rpm order correctly and accept without a revision
// separator: 1.2.3 stays 1.2.3, v1.2.3-rc1 becomes 1.2.3~rc1 (before
// 1.2.3), v1.2.3-4-gabc becomes 1.2.3+git4.abc (after 1.2.3), and a bare
// commit such as abc123-dirty becomes 0~git.abc123.dirty (before any
// release).
func PackageVersion(v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", fmt.Errorf("empty version: set VERSION, e.g. VERSION=1.2.3 make package")
	}
	if m := plainVersion.FindStringSubmatch(v); m != nil {
		return m[1], nil
	}
	if m := preVersion.FindStringSubmatch(v); m != nil {
		return m[1] + "~" + m[3], nil
	}
	if m := describeVersion.FindStringSubmatch(v); m != nil {
		s := m[1] + "+git" + m[3] + "." + m[4]
		if m[5] != "" {
			s += ".dirty"
		}
		return s, nil
	}
	clean := strings.Trim(unsafeChars.ReplaceAllString(v, "."), ".")
	if clean == "" {
		return "", fmt.Errorf("version %q has no usable characters: use digits and dots, e.g. 1.2.3", v)
	}
	return "0~git." + clean, nil
}
