package mvcc

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/storage"
)

// changesOf returns every change src made, in revision order, as another
// store's history would list them: puts with their versions, deletes as
// tombstones naming the key. Call it before compacting src.
func changesOf(t *testing.T, src *testStore) []Change {
	t.Helper()
	var out []Change
	for from := int64(2); from <= src.s.Rev(); {
		evs, next, err := src.s.Events(from, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			sub := int64(0)
			if n := len(out); n > 0 && out[n-1].Rev == ev.Kv.ModRevision {
				sub = out[n-1].Sub + 1
			}
			out = append(out, Change{Rev: ev.Kv.ModRevision, Sub: sub, Tombstone: ev.Type == mvccpb.DELETE, KV: ev.Kv})
		}
		from = next
	}
	return out
}

// compactedAt drops the changes a compaction at rev removes from a store
// that keeps versions by revision, as etcd's does: for each key, every change
// at or before rev but its newest there, and that one too if it is a
// deletion, unless keepTombstoneAtRev and the deletion is at rev itself (etcd
// 3.6 and later keep those).
func compactedAt(changes []Change, rev int64, keepTombstoneAtRev bool) []Change {
	newest := map[string]int{}
	for i, c := range changes {
		if c.Rev <= rev {
			newest[string(c.KV.Key)] = i
		}
	}
	var out []Change
	for i, c := range changes {
		if c.Rev > rev || (newest[string(c.KV.Key)] == i && (!c.Tombstone || (keepTombstoneAtRev && c.Rev == rev))) {
			out = append(out, c)
		}
	}
	return out
}

// TestLoaderRebuildsAStore makes a random history (puts, deletes, leases,
// transactions that delete a range and put a key of it again), compacts it,
// loads what a store keeping versions by revision would hold into an empty
// database, and requires the loaded store to be the original one: the same
// answers at every revision from the compaction on, the same events, the
// same HashKV, and the same layout of latest and history spaces.
func TestLoaderRebuildsAStore(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			if seed%2 == 1 { // many small batches
				defer func(n uint32) { loadBatchSize = n }(loadBatchSize)
				loadBatchSize = 5
			}
			runLoader(t, seed)
		})
	}
}

func runLoader(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	src := newTestStore(t)
	key := func() string { return fmt.Sprintf("k%d", r.IntN(12)) }
	for range 300 {
		switch n := r.IntN(10); {
		case n < 5:
			req := &pb.PutRequest{Key: []byte(key()), Value: []byte(fmt.Sprint(r.Int()))}
			if r.IntN(4) == 0 {
				req.Lease = 7
			}
			src.putReq(req)
		case n < 7:
			k := key()
			src.del(k, k+"5")
		case n < 9:
			k := key()
			if _, err := src.txn(&pb.TxnRequest{Success: []*pb.RequestOp{
				{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: []byte{0}}}},
				{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte("again")}}},
			}}); err != nil {
				t.Fatal(err)
			}
		default:
			k := key()
			if _, err := src.txn(&pb.TxnRequest{Success: []*pb.RequestOp{
				{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte("doomed")}}},
				{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: []byte{0}}}},
			}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	changes := changesOf(t, src)
	cur := src.s.Rev()
	compactRev := cur/2 + r.Int64N(cur/4)
	keepTombstone := seed >= 2 // as etcd 3.6 and later: compact at a deletion, which it keeps
	if keepTombstone {
		for _, c := range changes {
			if c.Tombstone && c.Rev <= compactRev {
				compactRev = c.Rev
			}
		}
	}
	src.compact(compactRev)

	dst := &testStore{t: t, dir: t.TempDir()}
	db, err := storage.Open(dst.dir, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	l := NewLoader(db, compactRev)
	for _, c := range compactedAt(changes, compactRev, keepTombstone) {
		if err := l.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	rev, live, err := l.Finish(cur, compactRev)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	dst.open()
	t.Cleanup(dst.close)

	if rev != cur || dst.s.Rev() != cur || dst.s.CompactRev() != compactRev {
		t.Fatalf("loaded revision %d (store %d), compacted %d; want %d, %d", rev, dst.s.Rev(), dst.s.CompactRev(), cur, compactRev)
	}
	all := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}
	now, err := src.s.Range(all)
	if err != nil {
		t.Fatal(err)
	}
	var liveKeys []string
	for _, k := range live {
		liveKeys = append(liveKeys, string(k.Key))
		if i := slices.IndexFunc(now.Kvs, func(kv *mvccpb.KeyValue) bool { return string(kv.Key) == string(k.Key) }); i < 0 || now.Kvs[i].Lease != k.Lease {
			t.Errorf("live key %q with lease %d is not live with that lease in the source", k.Key, k.Lease)
		}
	}
	if got, want := sortedCopy(liveKeys), keysOf(now.Kvs); !slices.Equal(got, want) {
		t.Errorf("live keys %q, want %q", got, want)
	}
	for at := compactRev; at <= cur; at++ {
		req := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: at}
		want, err := src.s.Range(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := dst.s.Range(req)
		if err != nil {
			t.Fatalf("range at %d: %v", at, err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("range at %d:\n got %v\nwant %v", at, got, want)
		}
	}
	if _, err := dst.s.Range(&pb.RangeRequest{Key: []byte("k1"), Revision: compactRev - 1}); !errors.Is(err, ErrCompacted) {
		t.Errorf("range below the compaction: %v, want ErrCompacted", err)
	}
	// etcd before 3.5.16 drops a deletion at the compaction revision
	// itself: then events are compared after it.
	eventsFrom := compactRev + 1
	if keepTombstone {
		eventsFrom = compactRev
	}
	wantEvs, _, err := src.s.Events(eventsFrom, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	gotEvs, _, err := dst.s.Events(eventsFrom, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(gotEvs) != len(wantEvs) {
		t.Fatalf("%d events after %d, want %d", len(gotEvs), compactRev, len(wantEvs))
	}
	for i := range gotEvs {
		if !proto.Equal(gotEvs[i], wantEvs[i]) {
			t.Fatalf("event %d: %v, want %v", i, gotEvs[i], wantEvs[i])
		}
	}
	for _, at := range []int64{0, compactRev, (compactRev + cur) / 2} {
		want, err := src.s.HashKV(at)
		if err != nil {
			t.Fatal(err)
		}
		got, err := dst.s.HashKV(at)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("HashKV(%d) = %+v, want %+v", at, got, want)
		}
	}
	if got, want := dst.historyVersions(), src.historyVersions(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("history layout\n got %v\nwant %v", got, want)
	}
	if got, want := dst.latestKeys(), src.latestKeys(); !slices.Equal(got, want) {
		t.Errorf("latest keys %q, want %q", got, want)
	}
	// The loaded store takes writes as its own: the next put of a key
	// continues its versions.
	for _, kv := range now.Kvs {
		resp := dst.put(string(kv.Key), "after")
		got := dst.get(string(kv.Key), 0)
		checkKV(t, "put after load", got, string(kv.Key), "after", kv.CreateRevision, resp.Header.Revision, kv.Version+1, 0)
	}
}

func TestLoaderRefusesChangesOutOfOrder(t *testing.T) {
	db, err := storage.Open(t.TempDir(), discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l := NewLoader(db, -1)
	put := func(rev, sub int64) Change {
		return Change{Rev: rev, Sub: sub, KV: &mvccpb.KeyValue{Key: []byte("a"), ModRevision: rev, CreateRevision: 2, Version: rev - 1}}
	}
	if err := l.Add(put(3, 0)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Change{put(2, 0), put(3, 0)} {
		if err := l.Add(c); !errors.Is(err, ErrOutOfOrder) {
			t.Errorf("add %d_%d after 3_0: %v, want ErrOutOfOrder", c.Rev, c.Sub, err)
		}
	}
	if err := l.Add(put(4, 0)); err != nil {
		t.Fatal(err)
	}
	if err := l.Add(put(3, 1)); !errors.Is(err, ErrOutOfOrder) {
		t.Errorf("add 3_1 after 4_0: %v, want ErrOutOfOrder", err)
	}
	if err := l.Add(Change{Rev: 5, KV: &mvccpb.KeyValue{Key: []byte("a"), ModRevision: 9}}); !errors.Is(err, storage.ErrCorrupt) {
		t.Errorf("add a put whose mod revision is not its revision: %v, want ErrCorrupt", err)
	}
}
