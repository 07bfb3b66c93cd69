package snapshot_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/snapshot"
	"github.com/plinthdb/plinth/internal/storage"
)

// sent is what a sender's Pebble snapshot held when it was streamed.
type sent struct {
	index, term  uint64
	stateMachine map[string][][2]string
	rev          int64
	compactRev   int64
}

// send streams a's state through a pipe, as the transport would, and
// receives it into dir.
func send(t *testing.T, a *member, dir string) (sent, snapshot.Image) {
	t.Helper()
	snap := a.db.NewSnapshot()
	defer func() { _ = snap.Close() }()
	index, err := storage.GetMetaUint64(snap, storage.MetaAppliedIndex)
	if err != nil {
		t.Fatal(err)
	}
	term, err := a.log.Term(index)
	if err != nil {
		t.Fatal(err)
	}
	s := sent{index: index, term: term, stateMachine: stateMachine(t, snap), rev: a.kv.Rev(), compactRev: a.kv.CompactRev()}
	pr, pw := io.Pipe()
	go func() { _ = pw.CloseWithError(snapshot.Write(pw, snap, index, term)) }()
	img, err := snapshot.Receive(vfs.Default, pr, dir)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if img.Index != index || img.Term != term {
		t.Fatalf("image at (%d, %d), want (%d, %d)", img.Index, img.Term, index, term)
	}
	return s, img
}

// checkInstalled checks that b's database holds the sent state machine byte
// for byte, an empty log truncated at the snapshot, and b's own state.
func checkInstalled(t *testing.T, db *pebble.DB, s sent, own map[string]string, hs *raftpb.HardState) {
	t.Helper()
	equalDumps(t, "state machine", stateMachine(t, db), s.stateMachine)
	if log := dump(t, db, storage.RaftLogSpan()); len(log) != 0 {
		t.Errorf("raft log holds %d entries after install, want none", len(log))
	}
	for _, sp := range storage.LocalSpans {
		if notes := dump(t, db, sp); len(notes) != 0 {
			t.Errorf("span %x holds %d of the member's notes after install, want none (neither its own nor the sender's)", sp.Start, len(notes))
		}
	}
	mark, _, err := storage.GetMeta(db, storage.MetaLogTruncated)
	if err != nil || !bytes.Equal(mark, storage.TruncationMark(s.index, s.term)) {
		t.Errorf("truncation mark %x (%v), want (%d, %d)", mark, err, s.index, s.term)
	}
	if got := memberState(t, db); len(got) != len(own) || got[storage.MetaClusterID] != own[storage.MetaClusterID] ||
		got[storage.MetaMemberID] != own[storage.MetaMemberID] || got[storage.MetaHardState] != own[storage.MetaHardState] {
		t.Errorf("member's own state %q, want %q", got, own)
	}
	ls, err := storage.OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	checkLogStore(t, "fresh log store", ls, s, hs)
}

func checkLogStore(t *testing.T, what string, ls *storage.LogStore, s sent, hs *raftpb.HardState) {
	t.Helper()
	first, _ := ls.FirstIndex()
	last, _ := ls.LastIndex()
	term, err := ls.Term(s.index)
	if first != s.index+1 || last != s.index || err != nil || term != s.term {
		t.Errorf("%s: first %d last %d term(%d)=%d (%v), want %d %d %d", what, first, last, s.index, term, err, s.index+1, s.index, s.term)
	}
	gotHS, cs, _ := ls.InitialState()
	if !proto.Equal(gotHS, hs) {
		t.Errorf("%s: hard state %v, want the member's own %v", what, gotHS, hs)
	}
	if want := []uint64{1, 2, 3}; !equalUint64s(cs.GetVoters(), want) {
		t.Errorf("%s: conf state voters %v, want the sender's %v", what, cs.GetVoters(), want)
	}
}

func equalUint64s(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestInstallReplacesStateMachine ships a sender's state to a receiver that
// holds different data in every space, and checks what Install promises. It
// is also the check of the Pebble behaviour the image relies on: the range
// deletions of an ingested table remove the receiver's keys, older, but not
// the table's own points, which get the same sequence number; and that stays
// true once the table is compacted with the data it covers, and after a
// reopen.
func TestInstallReplacesStateMachine(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flushed bool // the receiver's data is in sstables, not the memtable
	}{{"receiver in memtable", false}, {"receiver flushed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := openMember(t), openMember(t)
			buildSender(a)
			buildReceiver(b)
			if tc.flushed {
				if err := b.db.Flush(); err != nil {
					t.Fatal(err)
				}
			}
			own := memberState(t, b.db)
			hs, _, _ := b.log.InitialState()

			s, img := send(t, a, t.TempDir())
			if err := b.a.Restore(func() error { return snapshot.Install(b.db, img) }); err != nil {
				t.Fatalf("install: %v", err)
			}
			if err := b.log.Reload(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(img.Path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("image file after install: %v, want it consumed", err)
			}
			checkInstalled(t, b.db, s, own, hs)
			checkLogStore(t, "reloaded log store", b.log, s, hs)
			if b.a.AppliedIndex() != s.index || b.kv.Rev() != s.rev || b.kv.CompactRev() != s.compactRev {
				t.Errorf("applied %d rev %d compacted %d, want %d %d %d", b.a.AppliedIndex(), b.kv.Rev(), b.kv.CompactRev(), s.index, s.rev, s.compactRev)
			}

			if err := b.db.Compact(context.Background(), []byte{0}, []byte{0xff}, false); err != nil {
				t.Fatal(err)
			}
			checkInstalled(t, b.db, s, own, hs)
			b.close()
			db, err := storage.Open(b.dir, discardLogger(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = db.Close() }()
			checkInstalled(t, db, s, own, hs)
		})
	}
}

// TestWritesAfterInstallSeeInstalledKeys is the bug DESIGN.md warns about: a
// key filter, key cache or revision left over from the state before the
// install would make the next put of a key a create (version 1) or continue
// the receiver's old versions.
func TestWritesAfterInstallSeeInstalledKeys(t *testing.T) {
	a, b := openMember(t), openMember(t)
	buildSender(a)
	buildReceiver(b)
	want := map[string]*struct{ create, version int64 }{}
	for _, k := range []string{"shared", "a-only"} {
		kv := a.get(k)
		want[k] = &struct{ create, version int64 }{kv.CreateRevision, kv.Version}
	}
	s, img := send(t, a, t.TempDir())
	if err := b.a.Restore(func() error { return snapshot.Install(b.db, img) }); err != nil {
		t.Fatalf("install: %v", err)
	}
	if err := b.log.Reload(); err != nil {
		t.Fatal(err)
	}

	// The log resumes after the snapshot, and the applier takes it.
	for i, k := range []string{"shared", "a-only"} {
		resp := b.put(k, "after")
		if rev := resp.Header.Revision; rev != s.rev+int64(i)+1 {
			t.Fatalf("put %q at revision %d, want %d", k, rev, s.rev+int64(i)+1)
		}
		kv := b.get(k)
		if kv.CreateRevision != want[k].create || kv.Version != want[k].version+1 {
			t.Errorf("%q after install: create %d version %d, want the sender's create %d and version %d+1",
				k, kv.CreateRevision, kv.Version, want[k].create, want[k].version)
		}
	}
	if b.get("b-only") != nil {
		t.Fatal("b-only survived the install")
	}
	resp := b.put("b-only", "again")
	if kv := b.get("b-only"); kv.Version != 1 || kv.CreateRevision != resp.Header.Revision {
		t.Errorf("b-only recreated: create %d version %d, want a create at %d", kv.CreateRevision, kv.Version, resp.Header.Revision)
	}
	if got := b.a.AppliedIndex(); got != s.index+3 {
		t.Errorf("applied index %d, want %d", got, s.index+3)
	}
	// The lease table in memory is the sender's: its lease takes puts, the
	// receiver's old one is gone, and a revoke finds the sender's keys.
	if ids := b.a.Leases().IDs(); len(ids) != 1 || ids[0] != 100 {
		t.Fatalf("leases after install: %v, want [100]", ids)
	}
	res := b.propose(nil, &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte("x"), Lease: 200}})
	if res[0].Err == nil {
		t.Fatalf("put with the receiver's old lease succeeded after the install")
	}
	b.propose(nil, &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 100}})
	if b.get("leased-a") != nil {
		t.Fatalf("the revoke of an installed lease left its key")
	}
	// Compaction still works on the installed history, up to the newest
	// revision, and reads see the compacted state.
	b.propose(nil, &pb.InternalRaftRequest{Compaction: &pb.CompactionRequest{Revision: b.kv.Rev(), Physical: true}})
	if kv := b.get("shared"); kv == nil || kv.Version != want["shared"].version+1 {
		t.Errorf("shared after compaction: %v", kv)
	}
}

// TestInstallWithoutRestoreCorruptsVersions shows that the test above has
// teeth: skipping the reload leaves the receiver's key cache and revision in
// place, and the next put of a key continues the receiver's old versions.
func TestInstallWithoutRestoreCorruptsVersions(t *testing.T) {
	a, b := openMember(t), openMember(t)
	buildSender(a)
	buildReceiver(b)
	sharedA := a.get("shared")
	_, img := send(t, a, t.TempDir())
	if err := snapshot.Install(b.db, img); err != nil { // no Restore: memory is stale
		t.Fatalf("install: %v", err)
	}
	batch := b.kv.NewBatch()
	if _, err := batch.Put(&pb.PutRequest{Key: []byte("shared"), Value: []byte("after")}, func(int64) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, err := batch.Put(&pb.PutRequest{Key: []byte("b-only"), Value: []byte("after")}, func(int64) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if err := batch.Commit(); err != nil {
		t.Fatal(err)
	}
	if kv := b.get("shared"); kv.Version == sharedA.Version+1 {
		t.Errorf("shared got the right version %d without a reload; the stale key cache went unnoticed", kv.Version)
	}
	if kv := b.get("b-only"); kv.Version == 1 {
		t.Errorf("b-only was recreated as version 1 without a reload; the stale key cache went unnoticed")
	}
}

func TestWriteRefusesAnotherAppliedIndex(t *testing.T) {
	a := openMember(t)
	buildSender(a)
	snap := a.db.NewSnapshot()
	defer func() { _ = snap.Close() }()
	index := a.a.AppliedIndex()
	for _, wrong := range []uint64{index - 1, index + 1} {
		var buf bytes.Buffer
		err := snapshot.Write(&buf, snap, wrong, 3)
		if err == nil {
			t.Fatalf("write at %d from a snapshot applied to %d: no error", wrong, index)
		}
		if buf.Len() != 0 {
			t.Errorf("write at %d wrote %d bytes before refusing", wrong, buf.Len())
		}
	}
}

// validStream returns a complete image stream of a small state.
func validStream(t testing.TB) []byte {
	t.Helper()
	dir := t.TempDir()
	db, err := storage.Open(dir, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	b := db.NewBatch()
	_ = storage.PutMetaUint64(b, storage.MetaAppliedIndex, 9)
	_ = b.Set([]byte{storage.PrefixLatest, 'k'}, []byte("value"), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snapshot.Write(&buf, db, 9, 2); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func checkEmptyDir(t testing.TB, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("file left behind: %s", e.Name())
	}
}

func TestReceiveRejectsDamagedStreams(t *testing.T) {
	stream := validStream(t)
	n := len(stream)
	const header, trailer = 32, 16
	for _, cut := range []int{0, 1, 8, header - 1, header, header + 1, n / 2, n - trailer - 1, n - trailer, n - trailer + 1, n - 1} {
		dir := filepath.Join(t.TempDir(), "snap")
		_, err := snapshot.Receive(vfs.Default, bytes.NewReader(stream[:cut]), dir)
		if !errors.Is(err, snapshot.ErrCorrupt) {
			t.Errorf("stream cut at %d of %d: error %v, want ErrCorrupt", cut, n, err)
		}
		checkEmptyDir(t, dir)
	}
	for _, pos := range []int{0, 7, 16, 24, 31, header, header + 10, n / 2, n - trailer - 1, n - trailer, n - 5, n - 1} {
		damaged := bytes.Clone(stream)
		damaged[pos] ^= 0x40
		dir := t.TempDir()
		_, err := snapshot.Receive(vfs.Default, bytes.NewReader(damaged), dir)
		if !errors.Is(err, snapshot.ErrCorrupt) {
			t.Errorf("byte %d of %d flipped: error %v, want ErrCorrupt", pos, n, err)
		}
		checkEmptyDir(t, dir)
	}
	for _, pos := range []int{8, 12} { // version, table format: clear errors, not corruption
		damaged := bytes.Clone(stream)
		damaged[pos] ^= 0x40
		dir := t.TempDir()
		if _, err := snapshot.Receive(vfs.Default, bytes.NewReader(damaged), dir); err == nil {
			t.Errorf("byte %d of %d flipped: no error", pos, n)
		}
		checkEmptyDir(t, dir)
	}
	dir := t.TempDir()
	if _, err := snapshot.Receive(vfs.Default, bytes.NewReader(append(bytes.Clone(stream), 0)), dir); !errors.Is(err, snapshot.ErrCorrupt) {
		t.Errorf("stream with a byte appended: error %v, want ErrCorrupt", err)
	}
	checkEmptyDir(t, dir)

	broken := errors.New("connection reset")
	dir = t.TempDir()
	if _, err := snapshot.Receive(vfs.Default, io.MultiReader(bytes.NewReader(stream[:n/2]), errReader{broken}), dir); !errors.Is(err, broken) {
		t.Errorf("stream failing midway: error %v, want %v", err, broken)
	}
	checkEmptyDir(t, dir)

	dir = t.TempDir()
	img, err := snapshot.Receive(vfs.Default, bytes.NewReader(stream), dir)
	if err != nil || img.Index != 9 || img.Term != 2 {
		t.Fatalf("intact stream: %+v, %v", img, err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestCleanupRemovesLeftoverImages(t *testing.T) {
	stream := validStream(t)
	dir := t.TempDir()
	img, err := snapshot.Receive(vfs.Default, bytes.NewReader(stream), dir)
	if err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(dir, "snapshot-9-2-123.tmp")
	other := filepath.Join(dir, "keep.txt")
	for _, p := range []string{partial, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := snapshot.Cleanup(vfs.Default, dir); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{img.Path, partial} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after cleanup: %v", p, err)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("cleanup removed a file that is not an image: %v", err)
	}
	if err := snapshot.Cleanup(vfs.Default, filepath.Join(dir, "missing")); err != nil {
		t.Errorf("cleanup of a missing dir: %v", err)
	}
	if err := snapshot.Remove(vfs.Default, img); err != nil {
		t.Errorf("remove of a removed image: %v", err)
	}
}

func FuzzReceive(f *testing.F) {
	stream := validStream(f)
	f.Add(stream)
	f.Add(stream[:len(stream)/2])
	f.Add(stream[:32])
	f.Add([]byte{})
	f.Add([]byte("PLNTSNAP"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		img, err := snapshot.Receive(vfs.Default, bytes.NewReader(data), dir)
		if err != nil {
			checkEmptyDir(t, dir)
			return
		}
		got, rerr := os.ReadFile(img.Path)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if len(data) < 48 || !bytes.Equal(got, data[32:len(data)-16]) {
			t.Fatalf("accepted %d bytes, stored %d that are not its table", len(data), len(got))
		}
	})
}

// TestTableFormatIngestsAtEveryFormatVersion checks the choice of
// TableFormat: databases at the oldest format major version Pebble v2
// supports (where storage.Open leaves a new database) and at the newest both
// ingest an image.
func TestTableFormatIngestsAtEveryFormatVersion(t *testing.T) {
	stream := validStream(t)
	for _, fmv := range []pebble.FormatMajorVersion{pebble.FormatMinSupported, pebble.FormatNewest} {
		db, err := pebble.Open(t.TempDir(), &pebble.Options{FormatMajorVersion: fmv, Logger: quietLogger{}})
		if err != nil {
			t.Fatal(err)
		}
		img, err := snapshot.Receive(vfs.Default, bytes.NewReader(stream), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if err := snapshot.Install(db, img); err != nil {
			t.Errorf("install at format major version %s: %v", fmv, err)
		} else if v, closer, err := db.Get([]byte{storage.PrefixLatest, 'k'}); err != nil || string(v) != "value" {
			t.Errorf("format major version %s: installed key %q, %v", fmv, v, err)
		} else {
			_ = closer.Close()
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	db, err := storage.Open(t.TempDir(), discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	if got := db.FormatMajorVersion(); got != pebble.FormatMinSupported || got.MaxTableFormat() < snapshot.TableFormat {
		t.Errorf("storage.Open runs format major version %s (tables up to %s); revisit snapshot.TableFormat", got, got.MaxTableFormat())
	}
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...any)           {}
func (quietLogger) Errorf(string, ...any)          {}
func (quietLogger) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }
