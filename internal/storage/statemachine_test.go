package storage

import (
	"go/ast"
	"go/parser"
	"go/token"
	iofs "io/fs"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestEveryKeySpaceIsClassified fails when a Prefix* or Meta* constant of
// this package is neither part of the state machine, nor the Raft log, nor
// this member's own state: a snapshot would silently lose or clobber it.
func TestEveryKeySpaceIsClassified(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi iofs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	var prefixes, metas []string
	for _, pkg := range pkgs {
		for _, f := range pkg.Files {
			for _, d := range f.Decls {
				gd, ok := d.(*ast.GenDecl)
				if !ok || gd.Tok != token.CONST {
					continue
				}
				for _, spec := range gd.Specs {
					for _, name := range spec.(*ast.ValueSpec).Names {
						switch {
						case strings.HasPrefix(name.Name, "Prefix"):
							prefixes = append(prefixes, name.Name)
						case strings.HasPrefix(name.Name, "Meta"):
							metas = append(metas, name.Name)
						}
					}
				}
			}
		}
	}
	if len(prefixes) == 0 || len(metas) == 0 {
		t.Fatalf("found no constants: prefixes %v metas %v", prefixes, metas)
	}

	prefixValue := map[string]byte{
		"PrefixRaftLog": PrefixRaftLog, "PrefixMeta": PrefixMeta, "PrefixMembers": PrefixMembers,
		"PrefixAlarms": PrefixAlarms, "PrefixLatest": PrefixLatest, "PrefixHistory": PrefixHistory,
		"PrefixEvents": PrefixEvents, "PrefixLeases": PrefixLeases, "PrefixLeaseKeys": PrefixLeaseKeys,
		"PrefixLeaseClock": PrefixLeaseClock,
	}
	metaValue := map[string]string{
		"MetaHardState": MetaHardState, "MetaConfState": MetaConfState, "MetaLogTruncated": MetaLogTruncated,
		"MetaAppliedIndex": MetaAppliedIndex, "MetaRevision": MetaRevision, "MetaCompacted": MetaCompacted,
		"MetaCompactDone": MetaCompactDone, "MetaClusterID": MetaClusterID, "MetaMemberID": MetaMemberID,
		"MetaJoined": MetaJoined,
	}
	for _, name := range prefixes {
		p, ok := prefixValue[name]
		if !ok {
			t.Errorf("%s is a new key space: add it to StateMachineSpans (or to the member's own state) and to this test", name)
			continue
		}
		if p == PrefixRaftLog || p == PrefixMeta {
			continue
		}
		isSpan := func(s Span) bool { return string(s.Start) == string([]byte{p}) }
		if slices.ContainsFunc(StateMachineSpans, isSpan) == slices.ContainsFunc(LocalSpans, isSpan) {
			t.Errorf("%s (0x%02x) is in both or neither of StateMachineSpans and LocalSpans, want exactly one", name, p)
		}
	}
	for _, name := range metas {
		m, ok := metaValue[name]
		if !ok {
			t.Errorf("%s is a new meta value: add it to StateMachineMeta or MemberMeta and to this test", name)
			continue
		}
		in := 0
		if slices.Contains(StateMachineMeta, m) {
			in++
		}
		if slices.Contains(MemberMeta, m) {
			in++
		}
		if m == MetaLogTruncated {
			in++
		}
		if in != 1 {
			t.Errorf("%s (%s) is in %d of StateMachineMeta, MemberMeta and the log's mark, want exactly 1", name, strconv.Quote(m), in)
		}
	}
	for i := 1; i < len(StateMachineSpans); i++ {
		if string(StateMachineSpans[i-1].End) > string(StateMachineSpans[i].Start) {
			t.Errorf("StateMachineSpans are not in key order or overlap: %x then %x", StateMachineSpans[i-1], StateMachineSpans[i])
		}
	}
}
