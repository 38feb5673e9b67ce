package doccheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// logMessages returns the constant messages of every Warn and Error call
// in the non-test Go files under dirs, with where each one is.
func logMessages(t *testing.T, root string, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	fset := token.NewFileSet()
	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(root, d), func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) == 0 {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || sel.Sel.Name != "Warn" && sel.Sel.Name != "Error" {
					return true
				}
				lit, ok := call.Args[0].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				msg, err := strconv.Unquote(lit.Value)
				if err == nil {
					rel, _ := filepath.Rel(root, fset.Position(lit.Pos()).Filename)
					out[msg] = rel + ":" + strconv.Itoa(fset.Position(lit.Pos()).Line)
				}
				return true
			})
			return nil
		})
		require.NoError(t, err)
	}
	return out
}

func TestEveryAgentWarningIsInTroubleshooting(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	doc, err := os.ReadFile(filepath.Join(root, "docs", "troubleshooting.md"))
	require.NoError(t, err)
	msgs := logMessages(t, root, "agent", "bootstrap", "systemd")
	require.NotEmpty(t, msgs)
	var missing []string
	for m, where := range msgs {
		if !strings.Contains(string(doc), "`"+m+"`") {
			missing = append(missing, where+": "+strconv.Quote(m))
		}
	}
	sort.Strings(missing)
	require.Empty(t, missing, "log messages not explained in docs/troubleshooting.md (add each, in backticks, with its meaning and what to do)")
}
