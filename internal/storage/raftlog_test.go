package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// testLog is a LogStore on a real Pebble database that a test can reopen.
type testLog struct {
	t   testing.TB
	dir string
	db  *pebble.DB
	ls  *LogStore
}

func newTestLog(t testing.TB) *testLog {
	t.Helper()
	tl := &testLog{t: t, dir: t.TempDir()}
	tl.open()
	t.Cleanup(tl.close)
	return tl
}

func (tl *testLog) open() {
	tl.t.Helper()
	db, err := Open(tl.dir, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		tl.t.Fatal(err)
	}
	ls, err := OpenLogStore(db)
	if err != nil {
		_ = db.Close()
		tl.t.Fatalf("open log store: %v", err)
	}
	tl.db, tl.ls = db, ls
}

func (tl *testLog) close() {
	if tl.db != nil {
		if err := tl.db.Close(); err != nil {
			tl.t.Errorf("close pebble: %v", err)
		}
		tl.db, tl.ls = nil, nil
	}
}

func (tl *testLog) reopen() {
	tl.t.Helper()
	tl.close()
	tl.open()
}

// append stages, commits (synced) and publishes entries and hard state.
func (tl *testLog) append(hs *pb.HardState, ents []*pb.Entry) {
	tl.t.Helper()
	b := tl.db.NewBatch()
	if err := tl.ls.Append(b, hs, ents); err != nil {
		tl.t.Fatalf("append: %v", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		tl.t.Fatal(err)
	}
	tl.ls.AfterAppend(hs, ents)
}

func (tl *testLog) truncate(index uint64) {
	tl.t.Helper()
	b := tl.db.NewBatch()
	term, err := tl.ls.Truncate(b, index)
	if err != nil {
		tl.t.Fatalf("truncate %d: %v", index, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		tl.t.Fatal(err)
	}
	tl.ls.AfterTruncate(index, term)
}

// ents makes entries [lo, hi) of one term, each with distinct data.
func ents(lo, hi, term uint64) []*pb.Entry {
	var out []*pb.Entry
	for i := lo; i < hi; i++ {
		out = append(out, &pb.Entry{Index: proto.Uint64(i), Term: proto.Uint64(term), Type: pb.EntryType_EntryNormal.Enum(), Data: []byte(fmt.Sprintf("entry %d term %d", i, term))})
	}
	return out
}

// checkLog checks bounds, terms and contents against want, the entries that
// should be in the log (contiguous).
func (tl *testLog) checkLog(what string, truncIndex, truncTerm uint64, want []*pb.Entry) {
	tl.t.Helper()
	ls := tl.ls
	first, _ := ls.FirstIndex()
	last, _ := ls.LastIndex()
	wantLast := truncIndex
	if len(want) > 0 {
		wantLast = want[len(want)-1].GetIndex()
	}
	if first != truncIndex+1 || last != wantLast {
		tl.t.Fatalf("%s: first %d last %d, want %d %d", what, first, last, truncIndex+1, wantLast)
	}
	if term, err := ls.Term(truncIndex); err != nil || term != truncTerm {
		tl.t.Fatalf("%s: Term(%d) = %d, %v; want %d", what, truncIndex, term, err, truncTerm)
	}
	if truncIndex > 0 {
		if _, err := ls.Term(truncIndex - 1); err != raft.ErrCompacted {
			tl.t.Fatalf("%s: Term below the log: %v, want ErrCompacted", what, err)
		}
		if _, err := ls.Entries(truncIndex, last+1, math.MaxUint64); err != raft.ErrCompacted {
			tl.t.Fatalf("%s: Entries from the truncated index: %v, want ErrCompacted", what, err)
		}
	}
	if _, err := ls.Term(last + 1); err != raft.ErrUnavailable {
		tl.t.Fatalf("%s: Term(%d) past the log: %v, want ErrUnavailable", what, last+1, err)
	}
	for _, e := range want {
		if term, err := ls.Term(e.GetIndex()); err != nil || term != e.GetTerm() {
			tl.t.Fatalf("%s: Term(%d) = %d, %v; want %d", what, e.GetIndex(), term, err, e.GetTerm())
		}
	}
	if len(want) == 0 {
		return
	}
	got, err := ls.Entries(first, last+1, math.MaxUint64)
	if err != nil {
		tl.t.Fatalf("%s: Entries(%d, %d): %v", what, first, last+1, err)
	}
	if len(got) != len(want) {
		tl.t.Fatalf("%s: %d entries, want %d", what, len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			tl.t.Fatalf("%s: entry %d is %v, want %v", what, i, got[i], want[i])
		}
	}
}

func TestLogStoreEmpty(t *testing.T) {
	tl := newTestLog(t)
	tl.checkLog("new", 0, 0, nil)
	hs, cs, err := tl.ls.InitialState()
	if err != nil || !raft.IsEmptyHardState(hs) || len(cs.GetVoters()) != 0 {
		t.Fatalf("initial state %v %v %v", hs, cs, err)
	}
	if _, err := tl.ls.Snapshot(); err != raft.ErrSnapshotTemporarilyUnavailable {
		t.Fatalf("snapshot: %v", err)
	}
	tl.reopen()
	tl.checkLog("reopened", 0, 0, nil)
}

// TestLogStoreAppend walks one log through appends, conflicting suffixes,
// truncations and reopens, checking it against the expected entries after
// each step, from the tail cache and (after a reopen) from Pebble.
func TestLogStoreAppend(t *testing.T) {
	tl := newTestLog(t)
	var want []*pb.Entry
	var truncIndex, truncTerm uint64
	set := func(es []*pb.Entry) {
		first := es[0].GetIndex()
		want = append(want[:first-truncIndex-1], es...)
	}
	steps := []struct {
		name string
		do   func()
	}{
		{"append 1..10", func() { es := ents(1, 11, 1); tl.append(nil, es); set(es) }},
		{"append 11..12", func() { es := ents(11, 13, 1); tl.append(nil, es); set(es) }},
		{"conflicting shorter suffix replaces 6..12 with 6..8", func() { es := ents(6, 9, 2); tl.append(nil, es); set(es) }},
		{"conflicting longer suffix", func() { es := ents(8, 15, 3); tl.append(nil, es); set(es) }},
		{"overwrite of the last entry only", func() { es := ents(14, 15, 4); tl.append(nil, es); set(es) }},
		{"truncate to 4", func() {
			tl.truncate(4)
			truncIndex, truncTerm = 4, 1
			want = want[4:]
		}},
		{"truncate again below is a no-op", func() { tl.truncate(3) }},
		{"append after truncation", func() { es := ents(15, 20, 4); tl.append(nil, es); set(es) }},
		{"conflict right after the truncation point", func() { es := ents(5, 7, 5); tl.append(nil, es); set(es) }},
		{"truncate everything", func() {
			tl.truncate(6)
			truncIndex, truncTerm = 6, 5
			want = nil
		}},
		{"append to an empty truncated log", func() { es := ents(7, 9, 5); tl.append(nil, es); set(es) }},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			tl.t = t
			st.do()
			tl.checkLog("live", truncIndex, truncTerm, want)
			tl.reopen()
			tl.checkLog("reopened", truncIndex, truncTerm, want)
		})
	}
}

func TestLogStoreAppendWithoutReopen(t *testing.T) {
	// The same kind of history, served only from the tail cache.
	tl := newTestLog(t)
	tl.append(nil, ents(1, 11, 1))
	tl.append(nil, ents(4, 6, 2))
	want := append(ents(1, 4, 1), ents(4, 6, 2)...)
	tl.checkLog("after conflict", 0, 0, want)
	tl.append(nil, ents(6, 8, 2))
	want = append(want, ents(6, 8, 2)...)
	tl.checkLog("after append", 0, 0, want)
	tl.truncate(2)
	tl.checkLog("after truncation", 2, 1, want[2:])
	// Entries that start before the tail still come back whole.
	tl.reopen()
	tl.append(nil, ents(8, 10, 3))
	want = append(want, ents(8, 10, 3)...)
	tl.checkLog("disk and tail", 2, 1, want[2:])
}

func TestLogStoreTruncateErrors(t *testing.T) {
	tl := newTestLog(t)
	tl.append(nil, ents(1, 4, 1))
	b := tl.db.NewBatch()
	defer func() { _ = b.Close() }()
	if _, err := tl.ls.Truncate(b, 4); err == nil {
		t.Fatal("truncate past the last index succeeded")
	}
	if term, err := tl.ls.Truncate(b, 0); err != nil || term != 0 {
		t.Fatalf("truncate to 0: %d, %v", term, err)
	}
}

// TestLogStoreLongLog appends more entries than the tail cache holds, then
// replaces a suffix that starts before the cached tail.
func TestLogStoreLongLog(t *testing.T) {
	tl := newTestLog(t)
	var want []*pb.Entry
	for lo := uint64(1); lo <= 5000; lo += 500 {
		es := ents(lo, lo+500, 1)
		tl.append(nil, es)
		want = append(want, es...)
	}
	tl.checkLog("5000 entries", 0, 0, want)
	got, err := tl.ls.Entries(900, 4200, math.MaxUint64)
	if err != nil || len(got) != 3300 || got[0].GetIndex() != 900 || got[3299].GetIndex() != 4199 {
		t.Fatalf("entries across the cache edge: %d, %v", len(got), err)
	}
	es := ents(100, 103, 2)
	tl.append(nil, es)
	want = append(want[:99], es...)
	tl.checkLog("conflict before the cached tail", 0, 0, want)
	tl.reopen()
	tl.checkLog("reopened", 0, 0, want)
}

// TestLogStoreEntriesMaxSize checks raft's size limit: entries up to
// maxSize, and always at least one.
func TestLogStoreEntriesMaxSize(t *testing.T) {
	tl := newTestLog(t)
	es := ents(1, 11, 1)
	tl.append(nil, es)
	size := func(n int) uint64 {
		var s uint64
		for _, e := range es[:n] {
			s += uint64(proto.Size(e))
		}
		return s
	}
	cases := []struct {
		name    string
		lo, hi  uint64
		maxSize uint64
		want    int
	}{
		{"zero gives one", 1, 11, 0, 1},
		{"below one entry gives one", 1, 11, size(1) - 1, 1},
		{"exactly one", 1, 11, size(1), 1},
		{"exactly three", 1, 11, size(3), 3},
		{"just below three", 1, 11, size(3) - 1, 2},
		{"everything", 1, 11, size(10), 10},
		{"no limit", 1, 11, math.MaxUint64, 10},
		{"limit larger than the range", 3, 5, math.MaxUint64, 2},
		{"middle with limit", 3, 11, size(2), 2},
	}
	run := func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				got, err := tl.ls.Entries(c.lo, c.hi, c.maxSize)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != c.want {
					t.Fatalf("Entries(%d, %d, %d): %d entries, want %d", c.lo, c.hi, c.maxSize, len(got), c.want)
				}
				for i, e := range got {
					if !proto.Equal(e, es[int(c.lo)-1+i]) {
						t.Fatalf("entry %d: %v", i, e)
					}
				}
			})
		}
	}
	t.Run("tail cache", run)
	tl.reopen()
	t.Run("pebble", run)

	defer func() {
		if recover() == nil {
			t.Fatal("Entries past the last index did not panic")
		}
	}()
	_, _ = tl.ls.Entries(1, 12, math.MaxUint64)
}

func TestLogStoreHardStateAndConfState(t *testing.T) {
	tl := newTestLog(t)
	hs := &pb.HardState{Term: proto.Uint64(3), Vote: proto.Uint64(2), Commit: proto.Uint64(5)}
	tl.append(hs, ents(1, 6, 3))
	got, _, _ := tl.ls.InitialState()
	if !proto.Equal(got, hs) {
		t.Fatalf("hard state %v, want %v", got, hs)
	}
	// An empty hard state leaves the saved one alone.
	tl.append(&pb.HardState{}, ents(6, 7, 3))
	tl.append(nil, nil)
	got, _, _ = tl.ls.InitialState()
	if !proto.Equal(got, hs) {
		t.Fatalf("hard state after an empty one %v, want %v", got, hs)
	}
	// Hard state alone.
	hs2 := &pb.HardState{Term: proto.Uint64(4), Vote: proto.Uint64(1), Commit: proto.Uint64(6)}
	tl.append(hs2, nil)

	cs := &pb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}
	b := tl.db.NewBatch()
	if err := SaveConfState(b, cs); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	tl.ls.AfterConfState(cs)
	if got := tl.ls.ConfState(); !proto.Equal(got, cs) {
		t.Fatalf("conf state %v, want %v", got, cs)
	}
	// Returned states are copies.
	got, gotCS, _ := tl.ls.InitialState()
	got.Commit, gotCS.Voters = proto.Uint64(99), nil
	got, gotCS, _ = tl.ls.InitialState()
	if !proto.Equal(got, hs2) || !proto.Equal(gotCS, cs) {
		t.Fatalf("InitialState returned the store's own messages: %v %v", got, gotCS)
	}
	tl.reopen()
	got, gotCS, err := tl.ls.InitialState()
	if err != nil || !proto.Equal(got, hs2) || !proto.Equal(gotCS, cs) {
		t.Fatalf("after reopen: %v %v %v; want %v %v", got, gotCS, err, hs2, cs)
	}
	if last, _ := tl.ls.LastIndex(); last != 6 {
		t.Fatalf("last index after reopen %d, want 6", last)
	}
}

// TestLogStoreCorruption checks that damaged stored data surfaces as
// ErrCorrupt, not as a panic or a wrong answer.
func TestLogStoreCorruption(t *testing.T) {
	t.Run("missing entry", func(t *testing.T) {
		tl := newTestLog(t)
		tl.append(nil, ents(1, 11, 1))
		if err := tl.db.Delete(LogKey(5), pebble.Sync); err != nil {
			t.Fatal(err)
		}
		tl.reopen()
		if _, err := tl.ls.Entries(1, 11, math.MaxUint64); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("entries over a hole: %v, want ErrCorrupt", err)
		}
		if _, err := tl.ls.Entries(3, 6, math.MaxUint64); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("entries ending in a hole: %v, want ErrCorrupt", err)
		}
	})
	t.Run("entry stored under the wrong index", func(t *testing.T) {
		tl := newTestLog(t)
		tl.append(nil, ents(1, 4, 1))
		data, _ := proto.Marshal(&pb.Entry{Index: proto.Uint64(7), Term: proto.Uint64(1)})
		if err := tl.db.Set(LogKey(2), data, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		tl.reopen()
		if _, err := tl.ls.Entries(1, 4, math.MaxUint64); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("entries: %v, want ErrCorrupt", err)
		}
		if term, err := tl.ls.Term(2); !errors.Is(err, ErrCorrupt) {
			t.Errorf("BUG: Term(2) of an entry stored under index 2 that says it is index 7: %d, %v; want ErrCorrupt as Entries answers", term, err)
		}
	})
	for name, meta := range map[string]string{"hard state": MetaHardState, "conf state": MetaConfState, "truncation mark": MetaLogTruncated} {
		t.Run("bad "+name, func(t *testing.T) {
			tl := newTestLog(t)
			if err := tl.db.Set(MetaKey(meta), []byte{0xff, 0xff, 0xff}, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenLogStore(tl.db); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open with a bad %s: %v, want ErrCorrupt", name, err)
			}
		})
	}
	t.Run("bad log key", func(t *testing.T) {
		tl := newTestLog(t)
		if err := tl.db.Set([]byte{PrefixRaftLog, 1, 2}, []byte("x"), pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenLogStore(tl.db); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open with a bad log key: %v, want ErrCorrupt", err)
		}
	})
	t.Run("bad meta uint64", func(t *testing.T) {
		tl := newTestLog(t)
		if err := tl.db.Set(MetaKey(MetaAppliedIndex), []byte{1, 2, 3}, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if _, err := GetMetaUint64(tl.db, MetaAppliedIndex); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("GetMetaUint64 of 3 bytes: %v, want ErrCorrupt", err)
		}
	})
}

func TestMeta(t *testing.T) {
	tl := newTestLog(t)
	if v, err := GetMetaUint64(tl.db, MetaRevision); err != nil || v != 0 {
		t.Fatalf("absent meta: %d, %v", v, err)
	}
	if _, found, err := GetMeta(tl.db, MetaRevision); err != nil || found {
		t.Fatalf("absent meta found %v, %v", found, err)
	}
	b := tl.db.NewBatch()
	if err := PutMetaUint64(b, MetaRevision, math.MaxUint64-1); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	tl.reopen()
	if v, err := GetMetaUint64(tl.db, MetaRevision); err != nil || v != math.MaxUint64-1 {
		t.Fatalf("meta after reopen: %d, %v", v, err)
	}
	if k := MetaKey("x"); len(k) != 2 || k[0] != PrefixMeta || k[1] != 'x' {
		t.Fatalf("MetaKey(x) = %x", k)
	}
	if idx, err := decodeLogKey(LogKey(1 << 40)); err != nil || idx != 1<<40 {
		t.Fatalf("decodeLogKey(LogKey(1<<40)) = %d, %v", idx, err)
	}
}

// FuzzLogStore stores arbitrary bytes as a log entry and as the hard and
// conf states: reading them back must never panic, and must either fail
// with ErrCorrupt or return an entry with the right index.
func FuzzLogStore(f *testing.F) {
	good, _ := proto.Marshal(&pb.Entry{Index: proto.Uint64(3), Term: proto.Uint64(2), Data: []byte("x")})
	wrong, _ := proto.Marshal(&pb.Entry{Index: proto.Uint64(4), Term: proto.Uint64(2)})
	for _, seed := range [][]byte{nil, {}, good, wrong, good[:len(good)-1], {0xff}, {0x08, 0x80}, []byte("garbage")} {
		f.Add(seed)
	}
	tl := newTestLog(f)
	tl.append(nil, ents(1, 6, 2))
	tl.reopen() // serve entries from Pebble, not the tail cache
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := tl.db.Set(LogKey(3), data, pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		got, err := tl.ls.Entries(2, 5, math.MaxUint64)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Entries over a damaged entry: %v, want ErrCorrupt", err)
			}
		} else {
			for i, e := range got {
				if e.GetIndex() != uint64(2+i) {
					t.Fatalf("Entries returned %d at position %d", e.GetIndex(), i)
				}
			}
		}
		if _, err := tl.ls.Term(3); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Term of a damaged entry: %v, want ErrCorrupt", err)
		}
		for _, name := range []string{MetaHardState, MetaConfState, MetaLogTruncated} {
			db := tl.db
			if err := db.Set(MetaKey(name), data, pebble.NoSync); err != nil {
				t.Fatal(err)
			}
			if _, err := OpenLogStore(db); err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("OpenLogStore with %s %x: %v, want ErrCorrupt", name, data, err)
			}
			if err := db.Delete(MetaKey(name), pebble.NoSync); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestLogStoreTailCacheBytes: large entries are cached up to a byte bound,
// not by count alone, and those past it are read back from Pebble; a
// truncation releases what it drops.
func TestLogStoreTailCacheBytes(t *testing.T) {
	tl := newTestLog(t)
	const size = 1 << 20 // 1 MiB of data an entry: 64 MiB is twice the bound
	var want []*pb.Entry
	for i := uint64(1); i <= 100; i++ {
		e := &pb.Entry{Index: proto.Uint64(i), Term: proto.Uint64(1), Type: pb.EntryType_EntryNormal.Enum(), Data: bytes.Repeat([]byte{byte(i)}, size)}
		tl.append(nil, []*pb.Entry{e})
		want = append(want, e)
		if tl.ls.tailBytes > 2*tailCacheBytes || tl.ls.tailBytes != dataBytes(tl.ls.tail) {
			t.Fatalf("after entry %d: the cache holds %d bytes (counted %d), bound 2x%d", i, dataBytes(tl.ls.tail), tl.ls.tailBytes, tailCacheBytes)
		}
	}
	if n := len(tl.ls.tail); n >= 100 || n == 0 {
		t.Fatalf("the cache holds %d of 100 entries of 1 MiB", n)
	}
	tl.checkLog("100 entries of 1 MiB", 0, 0, want)
	tl.truncate(90)
	if tl.ls.tailBytes != dataBytes(tl.ls.tail) || tl.ls.tail[0].GetIndex() != 91 {
		t.Fatalf("after truncating to 90: cache from %d, %d bytes counted, %d held", tl.ls.tail[0].GetIndex(), tl.ls.tailBytes, dataBytes(tl.ls.tail))
	}
	tl.checkLog("truncated to 90", 90, 1, want[90:])
}
