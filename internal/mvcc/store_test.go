package mvcc

import (
	"math"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestRevisions checks etcd's revision rules: an empty store is at revision
// 1, each write request that changes something takes exactly one revision,
// and requests that change nothing take none.
func TestRevisions(t *testing.T) {
	ts := newTestStore(t)
	if got := ts.s.Rev(); got != 1 {
		t.Fatalf("empty store at revision %d, want 1", got)
	}
	if got := ts.s.CompactRev(); got != -1 {
		t.Fatalf("empty store compacted at %d, want -1", got)
	}
	steps := []struct {
		name    string
		run     func() int64 // returns the header revision
		wantRev int64
	}{
		{"first put", func() int64 { return ts.put("a", "1").Header.Revision }, 2},
		{"second put", func() int64 { return ts.put("b", "1").Header.Revision }, 3},
		{"put of an existing key", func() int64 { return ts.put("a", "2").Header.Revision }, 4},
		{"delete of a missing key", func() int64 { return ts.del("zz", "").Header.Revision }, 4},
		{"delete of an empty range", func() int64 { return ts.del("x", "y").Header.Revision }, 4},
		{"delete of two keys", func() int64 { return ts.del("a", "c").Header.Revision }, 5},
		{"read-only txn", func() int64 {
			resp, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: []byte("a")})}})
			if err != nil {
				t.Fatal(err)
			}
			return resp.Header.Revision
		}, 5},
		{"txn with three writes", func() int64 {
			resp, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{
				putOp("x", "1"), putOp("y", "1"), delOp("x", ""),
			}})
			if err != nil {
				t.Fatal(err)
			}
			return resp.Header.Revision
		}, 6},
		{"txn whose only delete finds nothing", func() int64 {
			resp, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{delOp("nothing", "")}})
			if err != nil {
				t.Fatal(err)
			}
			return resp.Header.Revision
		}, 6},
		{"empty txn", func() int64 {
			resp, err := ts.txn(&pb.TxnRequest{})
			if err != nil {
				t.Fatal(err)
			}
			return resp.Header.Revision
		}, 6},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if got := st.run(); got != st.wantRev {
				t.Fatalf("header revision %d, want %d", got, st.wantRev)
			}
			if got := ts.s.Rev(); got != st.wantRev {
				t.Fatalf("store revision %d, want %d", got, st.wantRev)
			}
		})
	}
}

// TestBatchRequests checks several requests in one batch: each takes its own
// revision, each sees the ones before it, and readers see none of them until
// Commit.
func TestBatchRequests(t *testing.T) {
	ts := newTestStore(t)
	ts.put("k", "0") // rev 2

	b := ts.s.NewBatch()
	r1, err := b.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("1")}, noLeases)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := b.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("2"), PrevKv: true}, noLeases)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Header.Revision != 3 || r2.Header.Revision != 4 || b.Rev() != 4 {
		t.Fatalf("revisions in batch: %d, %d, batch %d; want 3, 4, 4", r1.Header.Revision, r2.Header.Revision, b.Rev())
	}
	checkKV(t, "prev kv inside the batch", r2.PrevKv, "k", "1", 2, 3, 2, 0)
	rr, err := b.Range(&pb.RangeRequest{Key: []byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	if rr.Header.Revision != 4 || len(rr.Kvs) != 1 {
		t.Fatalf("batch range: %v", rr)
	}
	checkKV(t, "batch range", rr.Kvs[0], "k", "2", 2, 4, 3, 0)
	rr, err = b.Range(&pb.RangeRequest{Key: []byte("k"), Revision: 3})
	if err != nil {
		t.Fatal(err)
	}
	checkKV(t, "batch range at 3", rr.Kvs[0], "k", "1", 2, 3, 2, 0)
	if _, err := b.Range(&pb.RangeRequest{Key: []byte("k"), Revision: 5}); err != ErrFutureRev {
		t.Fatalf("batch range past the batch: %v, want ErrFutureRev", err)
	}

	// Nothing is visible before Commit.
	if got := ts.s.Rev(); got != 2 {
		t.Fatalf("store revision %d before commit, want 2", got)
	}
	checkKV(t, "store before commit", ts.get("k", 0), "k", "0", 2, 2, 1, 0)
	if _, err := ts.s.Range(&pb.RangeRequest{Key: []byte("k"), Revision: 3}); err != ErrFutureRev {
		t.Fatalf("store range at an uncommitted revision: %v, want ErrFutureRev", err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := ts.s.Rev(); got != 4 {
		t.Fatalf("store revision %d after commit, want 4", got)
	}
	checkKV(t, "store after commit", ts.get("k", 0), "k", "2", 2, 4, 3, 0)

	// An aborted batch leaves nothing.
	b = ts.s.NewBatch()
	if _, err := b.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("gone")}, noLeases); err != nil {
		t.Fatal(err)
	}
	b.Abort()
	if got := ts.s.Rev(); got != 4 {
		t.Fatalf("store revision %d after abort, want 4", got)
	}
	checkKV(t, "store after abort", ts.get("k", 0), "k", "2", 2, 4, 3, 0)
	if got := ts.put("k", "3").Header.Revision; got != 5 {
		t.Fatalf("put after abort at %d, want 5", got)
	}
}

// TestVersions checks create revision, mod revision and version through puts
// and deletes: a delete ends the key's life and the next put starts a new one.
func TestVersions(t *testing.T) {
	ts := newTestStore(t)
	steps := []struct {
		name                   string
		do                     func()
		present                bool
		value                  string
		create, mod, ver, leas int64
	}{
		{"create", func() { ts.put("k", "a") }, true, "a", 2, 2, 1, 0},
		{"update", func() { ts.put("k", "b") }, true, "b", 2, 3, 2, 0},
		{"update with lease", func() { ts.putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("c"), Lease: 7}) }, true, "c", 2, 4, 3, 7},
		{"update drops lease", func() { ts.put("k", "d") }, true, "d", 2, 5, 4, 0},
		{"other key", func() { ts.put("other", "x") }, true, "d", 2, 5, 4, 0},
		{"delete", func() { ts.del("k", "") }, false, "", 0, 0, 0, 0},
		{"recreate resets version", func() { ts.put("k", "e") }, true, "e", 8, 8, 1, 0},
		{"empty value", func() { ts.put("k", "") }, true, "", 8, 9, 2, 0},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do()
			kv := ts.get("k", 0)
			if !st.present {
				if kv != nil {
					t.Fatalf("key still present: %v", kv)
				}
				return
			}
			checkKV(t, "k", kv, "k", st.value, st.create, st.mod, st.ver, st.leas)
		})
	}
}

// TestPutOptions checks prev_kv, ignore_value, ignore_lease and unknown leases.
func TestPutOptions(t *testing.T) {
	ts := newTestStore(t)
	ts.putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v1"), Lease: 7}) // rev 2

	t.Run("prev_kv of a missing key", func(t *testing.T) {
		resp := ts.putReq(&pb.PutRequest{Key: []byte("new"), Value: []byte("x"), PrevKv: true}) // rev 3
		if resp.PrevKv != nil {
			t.Fatalf("prev kv %v for a new key", resp.PrevKv)
		}
	})
	t.Run("prev_kv", func(t *testing.T) {
		resp := ts.putReq(&pb.PutRequest{Key: []byte("new"), Value: []byte("y"), PrevKv: true}) // rev 4
		checkKV(t, "prev kv", resp.PrevKv, "new", "x", 3, 3, 1, 0)
	})
	t.Run("ignore_value keeps the value", func(t *testing.T) {
		resp := ts.putReq(&pb.PutRequest{Key: []byte("k"), IgnoreValue: true, PrevKv: true}) // rev 5
		checkKV(t, "prev kv", resp.PrevKv, "k", "v1", 2, 2, 1, 7)
		checkKV(t, "k", ts.get("k", 0), "k", "v1", 2, 5, 2, 0)
	})
	t.Run("ignore_lease keeps the lease", func(t *testing.T) {
		ts.putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v2"), Lease: 7})          // rev 6
		ts.putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v3"), IgnoreLease: true}) // rev 7
		checkKV(t, "k", ts.get("k", 0), "k", "v3", 2, 7, 4, 7)
	})
	for _, req := range []*pb.PutRequest{
		{Key: []byte("missing"), IgnoreValue: true},
		{Key: []byte("missing"), Value: []byte("v"), IgnoreLease: true},
	} {
		t.Run("ignore on a missing key", func(t *testing.T) {
			b := ts.s.NewBatch()
			defer b.Abort()
			if _, err := b.Put(req, lease7); err != ErrKeyNotFound {
				t.Fatalf("put %v: %v, want ErrKeyNotFound", req, err)
			}
			if b.Rev() != 7 {
				t.Fatalf("failed put moved the batch to revision %d", b.Rev())
			}
		})
	}
	t.Run("unknown lease", func(t *testing.T) {
		b := ts.s.NewBatch()
		defer b.Abort()
		if _, err := b.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), Lease: 8}, lease7); err != ErrLeaseNotFound {
			t.Fatalf("put with lease 8: %v, want ErrLeaseNotFound", err)
		}
		if b.Rev() != 7 {
			t.Fatalf("failed put moved the batch to revision %d", b.Rev())
		}
	})
}

// TestDeleteRange checks delete responses and ranges.
func TestDeleteRange(t *testing.T) {
	ts := newTestStore(t)
	for _, k := range []string{"a", "a\x00", "a\xff", "b", "c", "\xff"} {
		ts.put(k, "v-"+k)
	} // revs 2..7
	cases := []struct {
		name, key, end string
		want           []string
		rev            int64
	}{
		{"missing key", "zz", "", nil, 7},
		{"single key leaves its neighbours", "a", "", []string{"a"}, 8},
		{"range", "a\x00", "b\x00", []string{"a\x00", "a\xff", "b"}, 9},
		{"from key", "c", "\x00", []string{"c", "\xff"}, 10},
		{"nothing left", "\x00", "\x00", nil, 10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := ts.del(c.key, c.end)
			if resp.Deleted != int64(len(c.want)) || !slices.Equal(keysOf(resp.PrevKvs), c.want) {
				t.Fatalf("deleted %d %q, want %q", resp.Deleted, keysOf(resp.PrevKvs), c.want)
			}
			for _, kv := range resp.PrevKvs {
				if string(kv.Value) != "v-"+string(kv.Key) || kv.Version != 1 {
					t.Fatalf("prev kv %v", kv)
				}
			}
			if resp.Header.Revision != c.rev || ts.s.Rev() != c.rev {
				t.Fatalf("revision %d (store %d), want %d", resp.Header.Revision, ts.s.Rev(), c.rev)
			}
		})
	}
	// Without prev_kv the response has only the count.
	ts.put("p", "1")
	b := ts.s.NewBatch()
	resp, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("p")})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Deleted != 1 || resp.PrevKvs != nil {
		t.Fatalf("delete without prev_kv: %v", resp)
	}
	b.Abort()
}

// rangeFixture builds the data set of TestRangeOptions and returns the
// revision it ends at. Keys and their final versions:
//
//	"\x00"     q  create 15 mod 15 version 1
//	"a"        p  create  2 mod  9 version 3
//	"a\x00"    j  create  3 mod  7 version 2
//	"ab"       h  create  8 mod  8 version 1
//	"a\xff"    f  create  6 mod  6 version 1
//	"b"        d  create  5 mod  5 version 1
//	"c"        b  create 10 mod 10 version 1 lease 7
//	"\xff"     z  create 11 mod 11 version 1
//	"\xff\xff" a  create 14 mod 14 version 1
//
// "tmp" lived from 12 to 13.
func rangeFixture(ts *testStore) int64 {
	ts.put("a", "m")                                                          // 2
	ts.put("a\x00", "k")                                                      // 3
	ts.put("a", "n")                                                          // 4
	ts.put("b", "d")                                                          // 5
	ts.put("a\xff", "f")                                                      // 6
	ts.put("a\x00", "j")                                                      // 7
	ts.put("ab", "h")                                                         // 8
	ts.put("a", "p")                                                          // 9
	ts.putReq(&pb.PutRequest{Key: []byte("c"), Value: []byte("b"), Lease: 7}) // 10
	ts.put("\xff", "z")                                                       // 11
	ts.put("tmp", "x")                                                        // 12
	ts.del("tmp", "")                                                         // 13
	ts.put("\xff\xff", "a")                                                   // 14
	ts.put("\x00", "q")                                                       // 15
	return 15
}

var fixtureAll = []string{"\x00", "a", "a\x00", "ab", "a\xff", "b", "c", "\xff", "\xff\xff"}

// prefixEnd is clientv3.GetPrefixRangeEnd.
func prefixEnd(prefix string) string {
	end := []byte(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return string(end[:i+1])
		}
	}
	return "\x00"
}

type rangeCase struct {
	name      string
	req       *pb.RangeRequest
	want      []string // keys in answer order; nil with sortedBy means "check the order by the target"
	sortedBy  func(a, b *mvccpb.KeyValue) bool
	wantSet   []string // for sortedBy cases: the keys in any order
	count     int64
	more      bool
	keysOnly  bool
	countOnly bool
}

func rng(key, end string) *pb.RangeRequest {
	r := &pb.RangeRequest{Key: []byte(key)}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	return r
}

func with(r *pb.RangeRequest, f func(r *pb.RangeRequest)) *pb.RangeRequest { f(r); return r }

func rangeCases() []rangeCase {
	all := func() *pb.RangeRequest { return rng("\x00", "\x00") }
	byVersion := func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }
	return []rangeCase{
		{name: "single key", req: rng("a", ""), want: []string{"a"}, count: 1},
		{name: "single key with 0x00", req: rng("a\x00", ""), want: []string{"a\x00"}, count: 1},
		{name: "single key 0xff", req: rng("\xff", ""), want: []string{"\xff"}, count: 1},
		{name: "single key 0x00", req: rng("\x00", ""), want: []string{"\x00"}, count: 1},
		{name: "missing key", req: rng("zz", ""), want: nil, count: 0},
		{name: "deleted key", req: rng("tmp", ""), want: nil, count: 0},
		{name: "range", req: rng("a", "b"), want: []string{"a", "a\x00", "ab", "a\xff"}, count: 4},
		{name: "range end is exclusive", req: rng("a\x00", "ab"), want: []string{"a\x00"}, count: 1},
		{name: "range to the key's successor", req: rng("a", "a\x00"), want: []string{"a"}, count: 1},
		{name: "range over 0x00 keys", req: rng("\x00", "\x01"), want: []string{"\x00"}, count: 1},
		{name: "range ending in 0xff", req: rng("ab", "\xff\xff"), want: []string{"ab", "a\xff", "b", "c", "\xff"}, count: 5},
		{name: "prefix a", req: rng("a", prefixEnd("a")), want: []string{"a", "a\x00", "ab", "a\xff"}, count: 4},
		{name: "prefix a 0x00", req: rng("a\x00", prefixEnd("a\x00")), want: []string{"a\x00"}, count: 1},
		{name: "prefix a 0xff", req: rng("a\xff", prefixEnd("a\xff")), want: []string{"a\xff"}, count: 1},
		{name: "prefix 0xff is from key", req: rng("\xff", prefixEnd("\xff")), want: []string{"\xff", "\xff\xff"}, count: 2},
		{name: "from key", req: rng("b", "\x00"), want: []string{"b", "c", "\xff", "\xff\xff"}, count: 4},
		{name: "from 0x00 is everything", req: all(), want: fixtureAll, count: 9},
		{name: "empty span end before key", req: rng("b", "a"), want: nil, count: 0},
		{name: "empty span end equals key", req: rng("a", "a"), want: nil, count: 0},
		{name: "limit", req: with(all(), func(r *pb.RangeRequest) { r.Limit = 2 }), want: fixtureAll[:2], count: 9, more: true},
		{name: "limit one below count", req: with(all(), func(r *pb.RangeRequest) { r.Limit = 8 }), want: fixtureAll[:8], count: 9, more: true},
		{name: "limit equal to count", req: with(all(), func(r *pb.RangeRequest) { r.Limit = 9 }), want: fixtureAll, count: 9},
		{name: "limit above count", req: with(all(), func(r *pb.RangeRequest) { r.Limit = 100 }), want: fixtureAll, count: 9},
		// etcd treats a limit <= 0 as no limit (treeIndex.Revisions, rangeKeys).
		{name: "negative limit means no limit", req: with(all(), func(r *pb.RangeRequest) { r.Limit = -1 }), want: fixtureAll, count: 9},
		{name: "max int64 limit", req: with(all(), func(r *pb.RangeRequest) { r.Limit = math.MaxInt64 }), want: fixtureAll, count: 9},
		{name: "count_only", req: with(all(), func(r *pb.RangeRequest) { r.CountOnly = true }), count: 9, countOnly: true},
		{name: "count_only with limit", req: with(all(), func(r *pb.RangeRequest) { r.CountOnly = true; r.Limit = 1 }), count: 9, countOnly: true},
		{name: "count_only of a prefix", req: with(rng("a", "b"), func(r *pb.RangeRequest) { r.CountOnly = true }), count: 4, countOnly: true},
		{name: "keys_only", req: with(all(), func(r *pb.RangeRequest) { r.KeysOnly = true }), want: fixtureAll, count: 9, keysOnly: true},
		{name: "keys_only with limit", req: with(rng("a", "b"), func(r *pb.RangeRequest) { r.KeysOnly = true; r.Limit = 1 }), want: []string{"a"}, count: 4, more: true, keysOnly: true},
		{name: "sort key ascend", req: with(all(), func(r *pb.RangeRequest) { r.SortOrder = pb.RangeRequest_ASCEND }), want: fixtureAll, count: 9},
		{name: "sort key descend", req: with(all(), func(r *pb.RangeRequest) { r.SortOrder = pb.RangeRequest_DESCEND }),
			want: []string{"\xff\xff", "\xff", "c", "b", "a\xff", "ab", "a\x00", "a", "\x00"}, count: 9},
		{name: "sort key descend with limit", req: with(all(), func(r *pb.RangeRequest) { r.SortOrder = pb.RangeRequest_DESCEND; r.Limit = 2 }),
			want: []string{"\xff\xff", "\xff"}, count: 9, more: true},
		{name: "sort value ascend", req: with(all(), func(r *pb.RangeRequest) { r.SortTarget = pb.RangeRequest_VALUE; r.SortOrder = pb.RangeRequest_ASCEND }),
			want: []string{"\xff\xff", "c", "b", "a\xff", "ab", "a\x00", "a", "\x00", "\xff"}, count: 9},
		{name: "sort value with no order ascends", req: with(all(), func(r *pb.RangeRequest) { r.SortTarget = pb.RangeRequest_VALUE }),
			want: []string{"\xff\xff", "c", "b", "a\xff", "ab", "a\x00", "a", "\x00", "\xff"}, count: 9},
		{name: "sort value descend", req: with(all(), func(r *pb.RangeRequest) { r.SortTarget = pb.RangeRequest_VALUE; r.SortOrder = pb.RangeRequest_DESCEND }),
			want: []string{"\xff", "\x00", "a", "a\x00", "ab", "a\xff", "b", "c", "\xff\xff"}, count: 9},
		{name: "sort create ascend", req: with(all(), func(r *pb.RangeRequest) { r.SortTarget = pb.RangeRequest_CREATE; r.SortOrder = pb.RangeRequest_ASCEND }),
			want: []string{"a", "a\x00", "b", "a\xff", "ab", "c", "\xff", "\xff\xff", "\x00"}, count: 9},
		{name: "sort create descend with limit", req: with(all(), func(r *pb.RangeRequest) {
			r.SortTarget = pb.RangeRequest_CREATE
			r.SortOrder = pb.RangeRequest_DESCEND
			r.Limit = 3
		}),
			want: []string{"\x00", "\xff\xff", "\xff"}, count: 9, more: true},
		{name: "sort mod ascend with limit", req: with(all(), func(r *pb.RangeRequest) {
			r.SortTarget = pb.RangeRequest_MOD
			r.SortOrder = pb.RangeRequest_ASCEND
			r.Limit = 4
		}),
			want: []string{"b", "a\xff", "a\x00", "ab"}, count: 9, more: true},
		{name: "sort mod descend", req: with(rng("a", "b"), func(r *pb.RangeRequest) { r.SortTarget = pb.RangeRequest_MOD; r.SortOrder = pb.RangeRequest_DESCEND }),
			want: []string{"a", "ab", "a\x00", "a\xff"}, count: 4},
		{name: "sort version ascend", req: with(all(), func(r *pb.RangeRequest) { r.SortTarget = pb.RangeRequest_VERSION; r.SortOrder = pb.RangeRequest_ASCEND }),
			sortedBy: byVersion, wantSet: fixtureAll, count: 9},
		{name: "sort version descend", req: with(all(), func(r *pb.RangeRequest) {
			r.SortTarget = pb.RangeRequest_VERSION
			r.SortOrder = pb.RangeRequest_DESCEND
		}),
			sortedBy: func(a, b *mvccpb.KeyValue) bool { return a.Version > b.Version }, wantSet: fixtureAll, count: 9},
		// etcd only fetches everything when sort_order is set: a target with
		// no order sorts the first limit+1 keys by key.
		{name: "sort target without order takes limit+1 keys first", req: with(all(), func(r *pb.RangeRequest) { r.SortTarget = pb.RangeRequest_VERSION; r.Limit = 2 }),
			want: []string{"\x00", "a\x00"}, count: 9, more: true},
		{name: "min mod revision", req: with(all(), func(r *pb.RangeRequest) { r.MinModRevision = 9 }),
			want: []string{"\x00", "a", "c", "\xff", "\xff\xff"}, count: 9},
		{name: "max mod revision", req: with(all(), func(r *pb.RangeRequest) { r.MaxModRevision = 7 }),
			want: []string{"a\x00", "a\xff", "b"}, count: 9},
		{name: "min create revision", req: with(all(), func(r *pb.RangeRequest) { r.MinCreateRevision = 10 }),
			want: []string{"\x00", "c", "\xff", "\xff\xff"}, count: 9},
		{name: "max create revision", req: with(all(), func(r *pb.RangeRequest) { r.MaxCreateRevision = 5 }),
			want: []string{"a", "a\x00", "b"}, count: 9},
		{name: "filters combined", req: with(all(), func(r *pb.RangeRequest) { r.MinModRevision = 5; r.MaxModRevision = 8; r.MaxCreateRevision = 5 }),
			want: []string{"a\x00", "b"}, count: 9},
		{name: "filter then limit", req: with(all(), func(r *pb.RangeRequest) { r.MinModRevision = 9; r.Limit = 2 }),
			want: []string{"\x00", "a"}, count: 9, more: true},
		{name: "filter then limit, no more", req: with(all(), func(r *pb.RangeRequest) { r.MaxCreateRevision = 5; r.Limit = 3 }),
			want: []string{"a", "a\x00", "b"}, count: 9},
		{name: "filter sort and limit", req: with(all(), func(r *pb.RangeRequest) {
			r.MinCreateRevision = 3
			r.SortTarget = pb.RangeRequest_CREATE
			r.SortOrder = pb.RangeRequest_ASCEND
			r.Limit = 2
		}), want: []string{"a\x00", "b"}, count: 9, more: true},
	}
}

func checkRange(t *testing.T, c rangeCase, resp *pb.RangeResponse, headerRev int64) {
	t.Helper()
	if resp.Header.GetRevision() != headerRev {
		t.Errorf("header revision %d, want %d", resp.Header.GetRevision(), headerRev)
	}
	if resp.Count != c.count {
		t.Errorf("count %d, want %d", resp.Count, c.count)
	}
	if resp.More != c.more {
		t.Errorf("more %v, want %v", resp.More, c.more)
	}
	got := keysOf(resp.Kvs)
	switch {
	case c.countOnly:
		if len(resp.Kvs) != 0 {
			t.Errorf("count_only returned keys %q", got)
		}
	case c.sortedBy != nil:
		if !slices.Equal(sortedCopy(got), sortedCopy(c.wantSet)) {
			t.Errorf("keys %q, want %q in some order", got, c.wantSet)
		}
		for i := 1; i < len(resp.Kvs); i++ {
			if c.sortedBy(resp.Kvs[i], resp.Kvs[i-1]) {
				t.Errorf("keys %q are not in the requested order at %d", got, i)
			}
		}
	default:
		if !slices.Equal(got, c.want) {
			t.Errorf("keys %q, want %q (limit %d; etcd reads a limit <= 0, and limit+1 overflowing, as no limit)", got, c.want, c.req.Limit)
		}
	}
	for _, kv := range resp.Kvs {
		if c.keysOnly {
			if kv.Value != nil {
				t.Errorf("keys_only answer has value %q for %q", kv.Value, kv.Key)
			}
		} else if len(kv.Value) == 0 {
			t.Errorf("answer has no value for %q", kv.Key)
		}
		if kv.Version == 0 || kv.CreateRevision == 0 || kv.ModRevision == 0 {
			t.Errorf("answer lacks revisions for %q: %v", kv.Key, kv)
		}
		if string(kv.Key) == "c" && kv.Lease != 7 {
			t.Errorf("answer lost the lease of %q: %v", kv.Key, kv)
		}
	}
}

// TestRangeOptions runs the same range requests against the newest state
// (the latest key space), at its revision from the history space after every
// key was deleted and some rewritten, and inside a write transaction.
func TestRangeOptions(t *testing.T) {
	ts := newTestStore(t)
	r := rangeFixture(ts)

	// rangeAt runs every case at revision rev (0: the newest) and expects
	// headers at revision now.
	rangeAt := func(rev, now int64) func(t *testing.T) {
		return func(t *testing.T) {
			for _, c := range rangeCases() {
				t.Run(c.name, func(t *testing.T) {
					c.req.Revision = rev
					resp, err := ts.s.Range(c.req)
					if err != nil {
						t.Fatal(err)
					}
					checkRange(t, c, resp, now)
				})
			}
		}
	}
	t.Run("current", rangeAt(0, r))
	t.Run("current explicit revision", rangeAt(r, r))

	ts.del("\x00", "\x00")     // 16: everything
	ts.put("a", "later")       // 17
	ts.put("a\x00\x00", "new") // 18
	ts.put("tmp", "back")      // 19
	ts.put("\xff", "again")    // 20
	const now = 20

	t.Run("history", rangeAt(r, now))
	t.Run("history inside a txn", func(t *testing.T) {
		for _, c := range rangeCases() {
			t.Run(c.name, func(t *testing.T) {
				c.req.Revision = r
				b := ts.s.NewBatch()
				defer b.Abort()
				resp, err := b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{putOp("zzz", "1"), rangeOp(c.req)}}, noLeases)
				if err != nil {
					t.Fatal(err)
				}
				checkRange(t, c, resp.Responses[1].GetResponseRange(), now+1)
			})
		}
	})
}

// TestRangeHistory reads single keys and ranges at every past revision.
func TestRangeHistory(t *testing.T) {
	ts := newTestStore(t)
	ts.put("k", "v1")     // 2
	ts.put("k\x00", "z1") // 3
	ts.put("k", "v2")     // 4
	ts.del("k", "")       // 5
	ts.put("j", "j1")     // 6
	ts.put("k", "v3")     // 7
	ts.del("k", "k\x01")  // 8: k and k\x00
	ts.put("k\x00", "z2") // 9
	type want struct {
		value                string
		create, mod, version int64
	}
	ks := map[int64]*want{
		1: nil, 2: {"v1", 2, 2, 1}, 3: {"v1", 2, 2, 1}, 4: {"v2", 2, 4, 2}, 5: nil, 6: nil,
		7: {"v3", 7, 7, 1}, 8: nil, 9: nil,
	}
	zs := map[int64]*want{
		1: nil, 2: nil, 3: {"z1", 3, 3, 1}, 7: {"z1", 3, 3, 1}, 8: nil, 9: {"z2", 9, 9, 1},
	}
	counts := map[int64]int64{1: 0, 2: 1, 3: 2, 4: 2, 5: 1, 6: 2, 7: 3, 8: 1, 9: 2}
	for rev := int64(1); rev <= 9; rev++ {
		t.Run("rev "+string(rune('0'+rev)), func(t *testing.T) {
			kv := ts.get("k", rev)
			if w := ks[rev]; w == nil {
				if kv != nil {
					t.Fatalf("k at %d: %v, want none", rev, kv)
				}
			} else {
				checkKV(t, "k", kv, "k", w.value, w.create, w.mod, w.version, 0)
			}
			if w, ok := zs[rev]; ok {
				kv := ts.get("k\x00", rev)
				if w == nil {
					if kv != nil {
						t.Fatalf("k\\x00 at %d: %v, want none", rev, kv)
					}
				} else {
					checkKV(t, "k\\x00", kv, "k\x00", w.value, w.create, w.mod, w.version, 0)
				}
			}
			resp, err := ts.s.Range(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("\x00"), Revision: rev})
			if err != nil {
				t.Fatal(err)
			}
			if resp.Count != counts[rev] || int64(len(resp.Kvs)) != counts[rev] {
				t.Fatalf("%d keys (count %d) at %d, want %d: %q", len(resp.Kvs), resp.Count, rev, counts[rev], keysOf(resp.Kvs))
			}
			if resp.Header.Revision != 9 {
				t.Fatalf("header revision %d, want 9", resp.Header.Revision)
			}
		})
	}
}

// TestRangeRevisionErrors checks future and compacted revisions.
func TestRangeRevisionErrors(t *testing.T) {
	ts := newTestStore(t)
	for i := 0; i < 5; i++ {
		ts.put("k", string(rune('a'+i))) // 2..6
	}
	type revCase struct {
		name string
		rev  int64
		err  error
		val  string
	}
	cases := []revCase{
		{"current", 6, nil, "e"},
		{"zero is current", 0, nil, "e"},
		{"negative is current", -3, nil, "e"},
		{"future", 7, ErrFutureRev, ""},
		{"far future", math.MaxInt64, ErrFutureRev, ""},
		{"past", 3, nil, "b"},
	}
	run := func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				resp, err := ts.s.Range(&pb.RangeRequest{Key: []byte("k"), Revision: c.rev})
				if err != c.err {
					t.Fatalf("range at %d: %v, want %v", c.rev, err, c.err)
				}
				if err == nil && string(resp.Kvs[0].Value) != c.val {
					t.Fatalf("range at %d: %q, want %q", c.rev, resp.Kvs[0].Value, c.val)
				}
			})
		}
	}
	t.Run("before compaction", run)
	ts.compact(3)
	cases = append(cases,
		revCase{"compacted", 2, ErrCompacted, ""},
		revCase{"one below compaction", 1, ErrCompacted, ""},
		revCase{"above compaction", 4, nil, "c"},
		revCase{"compaction revision stays readable", 3, nil, "b"},
	)
	t.Run("after compaction", run)
	ts.reopen()
	t.Run("after reopen", run)
}
