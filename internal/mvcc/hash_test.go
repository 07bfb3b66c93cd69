package mvcc

import (
	"fmt"
	"math/rand/v2"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// hashWorkload writes n random requests (puts of new and old keys, deletes
// of keys and ranges, txns) with seed, the same on every store it is given.
func hashWorkload(t *testing.T, seed uint64, n int, stores ...*testStore) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 0))
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("k%03d", r.IntN(200))
		op := r.IntN(10)
		for _, ts := range stores {
			switch {
			case op < 7:
				ts.put(key, fmt.Sprintf("v%d", i))
			case op < 9:
				ts.del(key, "")
			default:
				if _, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{
					{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte("t")}}},
					{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key + "0"), RangeEnd: []byte(key + "9")}}},
				}}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

func mustHash(t *testing.T, ts *testStore, rev int64) KVHash {
	t.Helper()
	h, err := ts.s.HashKV(rev)
	if err != nil {
		t.Fatalf("HashKV(%d): %v", rev, err)
	}
	return h
}

// TestHashKVIgnoresPhysicalState: the hash at a revision depends on the
// logical history alone, not on how far background compaction got, nor on
// writes after the revision, nor on a reopen. It is what lets members that
// applied the same entries compare hashes.
func TestHashKVIgnoresPhysicalState(t *testing.T) {
	a, b := newTestStore(t), newTestStore(t)
	hashWorkload(t, 1, 3000, a, b)
	rev := a.s.Rev()
	before := mustHash(t, a, rev)
	if got := mustHash(t, b, 0); got != before {
		t.Fatalf("stores with equal writes hash differently: %+v and %+v", before, got)
	}
	hashWorkload(t, 2, 500, a)
	if got := mustHash(t, a, rev); got != before {
		t.Fatalf("later writes changed the hash at %d: %+v, was %+v", rev, got, before)
	}

	// Compact both at the same revision; b's hash is taken while its
	// compactor is held, before it deleted anything, a's once its
	// compaction is done.
	compactAt := rev - 1000
	a.compact(compactAt)
	b.s.stopBackground()
	var done <-chan struct{}
	b.commit(func(batch *Batch) {
		var err error
		if _, done, err = batch.Compact(compactAt); err != nil {
			t.Fatal(err)
		}
	})
	early := mustHash(t, b, rev)
	revs, err := loadRevisions(b.db)
	if err != nil {
		t.Fatal(err)
	}
	b.s.startBackground(revs, b.s.compactor.takeWaiters())
	waitDone(t, done, compactAt)
	want := mustHash(t, a, rev)
	if want.CompactRevision != compactAt || want.Revision != rev {
		t.Fatalf("hash after compaction at %d: %+v", compactAt, want)
	}
	if want == before {
		t.Fatalf("compaction at %d left the hash at %d unchanged (%+v): it hashes versions no read can reach", compactAt, rev, want)
	}
	if early != want {
		t.Fatalf("hash during physical compaction %+v, after it on another store %+v", early, want)
	}
	if got := mustHash(t, b, rev); got != want {
		t.Fatalf("hash after physical compaction %+v, want %+v", got, want)
	}
	b.reopen()
	if got := mustHash(t, b, rev); got != want {
		t.Fatalf("hash after reopen %+v, want %+v", got, want)
	}
}

// TestHashKVSeesEveryDifference: a store that differs in one version, one
// deleted key or one lease hashes differently, at the revisions where the
// difference is readable only.
func TestHashKVSeesEveryDifference(t *testing.T) {
	for _, tt := range []struct {
		name string
		diff func(ts *testStore, other bool)
	}{
		{"value", func(ts *testStore, other bool) {
			v := "x"
			if other {
				v = "y"
			}
			ts.put("k050", v)
		}},
		{"delete", func(ts *testStore, other bool) {
			if other {
				ts.del("k051", "")
			} else {
				ts.put("k051", "kept")
			}
		}},
		{"lease", func(ts *testStore, other bool) {
			req := &pb.PutRequest{Key: []byte("k052"), Value: []byte("v")}
			if other {
				req.Lease = 7
			}
			ts.putReq(req)
		}},
		{"new key", func(ts *testStore, other bool) {
			if other {
				ts.put("zzz", "")
			} else {
				ts.put("k053", "")
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newTestStore(t), newTestStore(t)
			hashWorkload(t, 3, 300, a, b)
			a.put("k050", "base")
			b.put("k050", "base")
			common := a.s.Rev()
			tt.diff(a, false)
			tt.diff(b, true)
			hashWorkload(t, 4, 50, a, b)
			if mustHash(t, a, common) != mustHash(t, b, common) {
				t.Errorf("stores differ at %d, after the revision hashed", common+1)
			}
			if mustHash(t, a, 0) == mustHash(t, b, 0) {
				t.Errorf("stores that differ at revision %d hash alike", common+1)
			}
		})
	}
}

func TestHashKVRevisions(t *testing.T) {
	ts := newTestStore(t)
	empty := mustHash(t, ts, 0)
	if empty.Revision != 1 || empty.CompactRevision != -1 {
		t.Fatalf("hash of an empty store: %+v", empty)
	}
	hashWorkload(t, 5, 100, ts)
	cur := ts.s.Rev()
	// Keys counts what a range read at the revision counts.
	for _, rev := range []int64{cur / 2, cur} {
		want, err := ts.s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev, CountOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if h := mustHash(t, ts, rev); h.Keys != want.Count {
			t.Fatalf("HashKV(%d) counts %d live keys, a range at %d counts %d", rev, h.Keys, rev, want.Count)
		}
	}
	if h := mustHash(t, ts, 0); h.Revision != cur {
		t.Fatalf("HashKV(0) hashed revision %d, want the current %d", h.Revision, cur)
	}
	if _, err := ts.s.HashKV(cur + 1); err != ErrFutureRev {
		t.Fatalf("HashKV(current+1): %v, want ErrFutureRev", err)
	}
	ts.compact(50)
	if _, err := ts.s.HashKV(49); err != ErrCompacted {
		t.Fatalf("HashKV below the compaction: %v, want ErrCompacted", err)
	}
	if h := mustHash(t, ts, 50); h.Revision != 50 || h.CompactRevision != 50 {
		t.Fatalf("HashKV at the compaction revision: %+v", h)
	}
}
