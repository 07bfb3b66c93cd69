package lease

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLeaseAndMVCCDoNotMeet enforces DESIGN.md's rule that mvcc and lease
// never import each other: apply is where they meet.
func TestLeaseAndMVCCDoNotMeet(t *testing.T) {
	for dir, forbidden := range map[string]string{
		".":       "github.com/plinthdb/plinth/internal/mvcc",
		"../mvcc": "github.com/plinthdb/plinth/internal/lease",
	} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no Go files in %s: %v", dir, err)
		}
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range f.Imports {
				if path, _ := strconv.Unquote(imp.Path.Value); path == forbidden {
					t.Errorf("%s imports %s", name, forbidden)
				}
			}
		}
	}
}
