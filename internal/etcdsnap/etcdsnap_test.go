package etcdsnap

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/lease"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/storage"
)

// The reference etcd's own snapshots are restored in test/compat; these
// tests build bbolt files by hand, laid out as etcd lays them out, to reach
// what a live etcd rarely leaves behind (an unfinished compaction) and
// damaged files.

func revKey(main, sub int64, tombstone bool) []byte {
	k := binary.BigEndian.AppendUint64(nil, uint64(main))
	k = append(k, '_')
	k = binary.BigEndian.AppendUint64(k, uint64(sub))
	if tombstone {
		k = append(k, 't')
	}
	return k
}

func encodeLease(id, ttl, remaining int64) []byte {
	var b []byte
	for num, v := range []int64{id, ttl, remaining} {
		if v != 0 {
			b = protowire.AppendTag(b, protowire.Number(num+1), protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(v))
		}
	}
	return b
}

type version struct {
	main, sub int64
	tombstone bool
	kv        *mvccpb.KeyValue
}

// writeSnapshot writes an etcd database holding versions, the meta values
// and leases given, followed by its SHA-256 as etcd streams it.
func writeSnapshot(t *testing.T, path string, versions []version, meta map[string][]byte, leases map[int64][]byte) {
	t.Helper()
	db, err := bolt.Open(path+".db", 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		kb, err := tx.CreateBucket(keyBucket)
		if err != nil {
			return err
		}
		for _, v := range versions {
			val, err := proto.Marshal(v.kv)
			if err != nil {
				return err
			}
			if err := kb.Put(revKey(v.main, v.sub, v.tombstone), val); err != nil {
				return err
			}
		}
		mb, err := tx.CreateBucket(metaBucket)
		if err != nil {
			return err
		}
		for k, v := range meta {
			if err := mb.Put([]byte(k), v); err != nil {
				return err
			}
		}
		if auth, ok := meta["test/auth"]; ok { // etcd's auth, which is not restored
			ab, err := tx.CreateBucket(authBucket)
			if err != nil {
				return err
			}
			if err := ab.Put([]byte("authEnabled"), auth); err != nil {
				return err
			}
			ub, err := tx.CreateBucket(usersBucket)
			if err != nil {
				return err
			}
			for _, u := range []string{"root", "alice"} {
				if err := ub.Put([]byte(u), []byte("user record")); err != nil {
					return err
				}
			}
		}
		lb, err := tx.CreateBucket(leaseBucket)
		if err != nil {
			return err
		}
		for id, v := range leases {
			if err := lb.Put(binary.BigEndian.AppendUint64(nil, uint64(id)), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path + ".db")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if err := os.WriteFile(path, append(data, sum[:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path + ".db"); err != nil {
		t.Fatal(err)
	}
}

func put(main, sub int64, key, value string, create, ver, leaseID int64) version {
	return version{main: main, sub: sub, kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: create, ModRevision: main, Version: ver, Lease: leaseID}}
}

func del(main, sub int64, key string) version {
	return version{main: main, sub: sub, tombstone: true, kv: &mvccpb.KeyValue{Key: []byte(key)}}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// sampleSnapshot is an etcd that compacted at 4 but finished only the
// compaction at 3: a@2 is still in its key bucket, below a@3.
func sampleSnapshot(t *testing.T, path string) {
	writeSnapshot(t, path, []version{
		put(2, 0, "a", "1", 2, 1, 0),
		put(3, 0, "a", "2", 2, 2, 5),
		put(4, 0, "b", "1", 4, 1, 0),
		put(4, 1, "c", "1", 4, 1, 0),
		del(5, 0, "b"),
		put(6, 0, "c", "2", 4, 2, 5),
	}, map[string][]byte{
		"scheduledCompactRev": revKey(4, 0, false),
		"finishedCompactRev":  revKey(3, 0, false),
		"consistent_index":    binary.BigEndian.AppendUint64(nil, 42),
		"term":                binary.BigEndian.AppendUint64(nil, 3),
		"test/auth":           {1},
	}, map[int64][]byte{
		5: encodeLease(5, 100, 40),
		6: encodeLease(6, 10, 0),
	})
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snap")
	sampleSnapshot(t, path)
	db, err := storage.Open(filepath.Join(dir, "db"), quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	info, err := Load(path, filepath.Join(dir, "scratch"), db, false)
	if err != nil {
		t.Fatal(err)
	}
	// etcd's HashKV at 6 hashes what follows the compaction and, at or
	// before it, only the live versions: a@3, not a@2, b@4 (deleted since)
	// nor c@4 (superseded).
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	h.Write([]byte("key"))
	for _, v := range []version{put(3, 0, "a", "2", 2, 2, 5), del(5, 0, "b"), put(6, 0, "c", "2", 4, 2, 5)} {
		val, err := proto.Marshal(v.kv)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(revKey(v.main, v.sub, v.tombstone))
		h.Write(val)
	}
	want := Info{Revision: 6, CompactRevision: 4, Keys: 2, Versions: 6, Leases: 2, Index: 42, Term: 3, AuthEnabled: true, AuthUsers: 2, Checksum: true, Size: info.Size, EtcdHash: h.Sum32()}
	if info != want {
		t.Errorf("info %+v, want %+v", info, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "scratch")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the scratch copy is still there: %v", err)
	}

	s, err := mvcc.Open(db, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	get := func(key string, rev int64) (*mvccpb.KeyValue, error) {
		resp, err := s.Range(&pb.RangeRequest{Key: []byte(key), Revision: rev})
		if err != nil || len(resp.Kvs) == 0 {
			return nil, err
		}
		return resp.Kvs[0], nil
	}
	for _, c := range []struct {
		key      string
		rev      int64
		value    string
		ver, mod int64
	}{
		{"a", 4, "2", 2, 3}, {"a", 0, "2", 2, 3}, {"b", 4, "1", 1, 4}, {"b", 5, "", 0, 0},
		{"c", 5, "1", 1, 4}, {"c", 6, "2", 2, 6},
	} {
		kv, err := get(c.key, c.rev)
		if err != nil {
			t.Fatal(err)
		}
		if c.ver == 0 {
			if kv != nil {
				t.Errorf("%s at %d: %v, want none", c.key, c.rev, kv)
			}
			continue
		}
		if kv == nil || string(kv.Value) != c.value || kv.Version != c.ver || kv.ModRevision != c.mod {
			t.Errorf("%s at %d: %v, want value %q version %d mod %d", c.key, c.rev, kv, c.value, c.ver, c.mod)
		}
	}
	if _, err := get("a", 3); !errors.Is(err, mvcc.ErrCompacted) {
		t.Errorf("a at 3: %v, want ErrCompacted", err)
	}
	evs, _, err := s.Events(4, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Type.String()+" "+string(ev.Kv.Key))
	}
	if want := []string{"PUT b", "PUT c", "DELETE b", "PUT c"}; !slices.Equal(got, want) {
		t.Errorf("events from 4: %q, want %q", got, want)
	}

	now := time.Unix(1000, 0)
	leases, err := lease.Open(db, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	if ids := leases.IDs(); !slices.Equal(ids, []int64{5, 6}) {
		t.Errorf("leases %v, want [5 6]", ids)
	}
	keys, err := leases.Keys(5)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || string(keys[0]) != "a" || string(keys[1]) != "c" {
		t.Errorf("keys of lease 5: %q, want [a c]", keys)
	}
	leases.Promote(1, 0)
	for id, want := range map[int64]time.Duration{5: 40 * time.Second, 6: 10 * time.Second} {
		if left, _, err := leases.Remaining(id); err != nil || left != want {
			t.Errorf("lease %d: %v left (%v), want %v", id, left, err, want)
		}
	}
}

// TestLoadRefusesDamage requires every damaged file to be refused with
// ErrCorrupt, and the scratch copy removed.
func TestLoadRefusesDamage(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "snap")
	sampleSnapshot(t, good)
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	flipped := slices.Clone(data)
	flipped[len(flipped)/3] ^= 1
	for _, c := range []struct {
		name string
		data []byte
		skip bool
	}{
		{"truncated", data[:len(data)-100], false},
		{"flipped byte", flipped, false},
		{"no checksum", data[:len(data)-32], false},
		{"not bbolt", make([]byte, 8192), true},
		{"truncated, unchecked", data[:4096], true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "snap")
			if err := os.WriteFile(path, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			db, err := pebble.Open(filepath.Join(dir, "db"), &pebble.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			scratch := filepath.Join(dir, "scratch")
			if _, err := Load(path, scratch, db, c.skip); !errors.Is(err, ErrCorrupt) {
				t.Errorf("load: %v, want ErrCorrupt", err)
			}
			if _, err := os.Stat(scratch); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the scratch copy is still there: %v", err)
			}
		})
	}
	// Without its checksum, the database loads when asked to skip it.
	path := filepath.Join(dir, "unchecked")
	if err := os.WriteFile(path, data[:len(data)-32], 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := storage.Open(filepath.Join(dir, "db"), quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	info, err := Load(path, filepath.Join(dir, "scratch"), db, true)
	if err != nil || info.Checksum || info.Revision != 6 {
		t.Errorf("load without checksum: %+v, %v", info, err)
	}
}

func TestLooks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snap")
	sampleSnapshot(t, path)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !Looks(data[:64]) {
		t.Error("an etcd snapshot does not look like one")
	}
	if Looks([]byte("PLNTSNAP and the rest of a plinth backup's header")) || Looks(data[:10]) {
		t.Error("something else looks like an etcd snapshot")
	}
}

func TestDecodeLease(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want etcdLease
		ok   bool
	}{
		{"all fields", encodeLease(7, 60, 12), etcdLease{7, 60, 12}, true},
		{"empty", nil, etcdLease{}, true},
		{"negative ID", encodeLease(-3, 5, 0), etcdLease{-3, 5, 0}, true},
		{"unknown field skipped", append(protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), []byte("x")), encodeLease(1, 2, 3)...), etcdLease{1, 2, 3}, true},
		{"wrong wire type", protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), []byte("x")), etcdLease{}, false},
		{"truncated varint", []byte{0x08, 0x80}, etcdLease{}, false},
		{"bad tag", []byte{0x80}, etcdLease{}, false},
	} {
		got, err := decodeLease(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v (ok %v)", c.name, got, err, c.want, c.ok)
		}
	}
}

// FuzzDecodeLease requires the decoder never to panic, and to read back
// every record a protobuf encoder writes.
func FuzzDecodeLease(f *testing.F) {
	f.Add(encodeLease(7, 60, 12), int64(1), int64(2), int64(3))
	f.Add([]byte{0x08, 0x80}, int64(-1), int64(0), int64(1<<40))
	f.Fuzz(func(t *testing.T, raw []byte, id, ttl, remaining int64) {
		_, _ = decodeLease(raw)
		got, err := decodeLease(encodeLease(id, ttl, remaining))
		if err != nil || got != (etcdLease{id, ttl, remaining}) {
			t.Fatalf("round trip of %d %d %d: %+v, %v", id, ttl, remaining, got, err)
		}
	})
}
