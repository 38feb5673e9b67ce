package layout

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

type goFile struct {
	rel  string // path relative to the repository root
	dir  string // folder relative to the root
	file *ast.File
}

func repoFiles(t *testing.T) []goFile {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var files []goFile
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ParseComments|parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files = append(files, goFile{rel: filepath.ToSlash(rel), dir: filepath.ToSlash(filepath.Dir(rel)), file: f})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no Go files found")
	}
	return files
}

func topLevel(rel string) string {
	top, _, _ := strings.Cut(rel, "/")
	return top
}

func TestImportsFlowOneWay(t *testing.T) {
	for _, f := range repoFiles(t) {
		if strings.HasSuffix(f.rel, "_test.go") {
			continue
		}
		from := topLevel(f.dir)
		for _, imp := range f.file.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !strings.HasPrefix(p, Module+"/") {
				continue
			}
			to := topLevel(strings.TrimPrefix(p, Module+"/"))
			if to == from {
				continue
			}
			if to == "cmd" || to == "test" {
				t.Errorf("%s imports %s: nothing may import cmd/ or test/", f.rel, p)
				continue
			}
			if from == "cmd" || from == "test" {
				continue
			}
			allowed, known := Allowed[from]
			if !known {
				t.Errorf("%s: top-level folder %q has no import rule in internal/layout", f.rel, from)
				continue
			}
			if !slices.Contains(allowed, to) {
				t.Errorf("%s imports %s: %s/ may import only %v", f.rel, p, from, allowed)
			}
		}
	}
}

func TestPackageNamesAndDocs(t *testing.T) {
	docs := map[string][]string{} // dir -> files with a package doc
	names := map[string]string{}  // dir -> package name (non-test)
	for _, f := range repoFiles(t) {
		if strings.HasSuffix(f.rel, "_test.go") {
			continue
		}
		name := f.file.Name.Name
		names[f.dir] = name
		if f.file.Doc != nil && strings.HasPrefix(f.file.Doc.Text(), "Package "+name+" ") ||
			f.file.Doc != nil && name == "main" && strings.HasPrefix(f.file.Doc.Text(), "Command ") {
			docs[f.dir] = append(docs[f.dir], f.rel)
		}
	}
	for dir, name := range names {
		if slices.Contains(Forbidden, name) {
			t.Errorf("%s: package name %q says nothing; name it for what it does", dir, name)
		}
		if name != "main" && name != filepath.Base(dir) && dir != "." {
			t.Errorf("%s: package %q does not match its folder name", dir, name)
		}
		switch n := len(docs[dir]); {
		case n == 0:
			t.Errorf("%s: no package doc comment (\"// Package %s ...\" or \"// Command ...\" for main)", dir, name)
		case n > 1:
			t.Errorf("%s: package doc in several files: %v", dir, docs[dir])
		}
	}
}

func TestTopLevelFoldersHaveRules(t *testing.T) {
	entries, err := os.ReadDir("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		switch e.Name() {
		case "cmd", "test", "docs", "bin", "dist": // bin/ and dist/ are build output
			continue
		}
		if _, ok := Allowed[e.Name()]; !ok {
			t.Errorf("top-level folder %q has no import rule in internal/layout.Allowed", e.Name())
		}
	}
}
