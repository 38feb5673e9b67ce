// Package layout states nodetrust's package layering, the one-way flow
// metadata -> bootstrap -> agent -> systemd with cmd wiring them, and its
// test enforces it on every non-test Go file of the repository.
package layout

// Module is the module path of nodetrust.
const Module = "github.com/nodetrust/nodetrust"

// Allowed maps each top-level folder to the top-level folders its non-test
// code may import. A folder may always import itself. cmd and test may
// import anything; nothing may import cmd or test.
var Allowed = map[string][]string{
	"internal":     {},
	"metadata":     {"internal"},
	"bootstrap":    {"metadata", "internal"},
	"agent":        {"bootstrap", "metadata", "internal"},
	"systemd":      {"agent", "bootstrap", "metadata", "internal"},
	"controlplane": {"metadata", "internal"},
	"packaging":    {"internal"},
}

// Forbidden package names: they say nothing about what the package does.
var Forbidden = []string{"util", "utils", "common", "misc", "helpers"}
