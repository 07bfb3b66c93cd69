package backup

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/membership"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/storage"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// sourceBackup writes n keys into a new store, marks them applied at entry
// 42, and returns a backup of it in a file.
func sourceBackup(t *testing.T, n int) (string, Info) {
	t.Helper()
	db, err := storage.Open(t.TempDir(), quiet, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := mvcc.Open(db, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range n {
		b := s.NewBatch()
		if _, err := b.Put(&pb.PutRequest{Key: []byte{byte(i)}, Value: bytes.Repeat([]byte{'v'}, i)}, func(int64) bool { return false }); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if err := storage.PutMetaUint64(db, storage.MetaAppliedIndex, 42); err != nil {
		t.Fatal(err)
	}
	snap := db.NewSnapshot()
	defer snap.Close()
	path := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := Write(f, snap, 42, 7, time.Unix(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	return path, info
}

func TestWriteVerify(t *testing.T) {
	path, info := sourceBackup(t, 50)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != info.Size || (st.Size()-checksumSize)%sectorSize != 0 {
		t.Fatalf("backup is %d bytes (Write says %d); etcd's client wants 512k+32", st.Size(), info.Size)
	}
	got, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != 51 || got.Keys != 50 || got.CompactRevision != -1 || got != info {
		t.Fatalf("Verify: %+v, Write wrote %+v", got, info)
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, damaged := range map[string][]byte{
		"truncated":         b[:len(b)-1],
		"truncated sector":  b[:len(b)-sectorSize],
		"flipped image bit": flip(b, 100),
		"flipped footer":    flip(b, len(b)-checksumSize-10),
		"not a backup":      make([]byte, 1024+checksumSize),
	} {
		p := filepath.Join(t.TempDir(), "damaged")
		if err := os.WriteFile(p, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(p); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Verify: %v, want ErrCorrupt", name, err)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func TestRestore(t *testing.T) {
	path, info := sourceBackup(t, 20)
	id := Identity{ClusterID: 0xc1, MemberID: 0xb, Members: []membership.Member{
		{ID: 0xa, Name: "a", PeerURLs: []string{"http://a:2380"}},
		{ID: 0xb, Name: "b", PeerURLs: []string{"http://b:2380"}, ClientURLs: []string{"http://b:2379"}},
	}}
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := Restore(path, dir, id, RestoreOptions{}, quiet); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(path, dir, id, RestoreOptions{}, quiet); err == nil {
		t.Fatal("a second restore into the same data dir succeeded")
	}
	db, err := pebble.Open(storage.DatabaseDir(dir), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for name, want := range map[string]uint64{
		storage.MetaClusterID: 0xc1, storage.MetaMemberID: 0xb, storage.MetaAppliedIndex: 42, storage.MetaRevision: uint64(info.Revision),
	} {
		if got, err := storage.GetMetaUint64(db, name); err != nil || got != want {
			t.Errorf("%s: %d (%v), want %d", name, got, err, want)
		}
	}
	members, _, err := membership.List(db)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 2 || members[0].Name != "a" || members[1].ClientURLs != nil {
		t.Fatalf("members %+v: want a and b, without client URLs until they publish them", members)
	}
	cs, err := storage.GetConfState(db)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs.Voters) != 2 {
		t.Fatalf("configuration %v, want the two members as voters", cs)
	}
	logs, err := storage.OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	hs, _, err := logs.InitialState()
	if err != nil {
		t.Fatal(err)
	}
	first, _ := logs.FirstIndex()
	last, _ := logs.LastIndex()
	term, err := logs.Term(42)
	if hs.GetCommit() != 42 || hs.GetTerm() != 7 || first != 43 || last != 42 || term != 7 || err != nil {
		t.Fatalf("raft state: hard state %v, log [%d,%d], term of 42 %d (%v); want commit 42 term 7, an empty log after 42", hs, first, last, term, err)
	}
	s, err := mvcc.Open(db, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h, err := s.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	if h.Hash != info.Hash {
		t.Fatalf("restored store hashes %x, the backup says %x", h.Hash, info.Hash)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, "snap", "*")); len(leftovers) != 0 {
		t.Fatalf("restore left %v in the snapshot dir", leftovers)
	}
}
