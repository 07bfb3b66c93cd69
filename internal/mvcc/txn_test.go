package mvcc

import (
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func rangeOp(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func putOp(key, value string) *pb.RequestOp {
	return putReqOp(&pb.PutRequest{Key: []byte(key), Value: []byte(value)})
}

func putReqOp(r *pb.PutRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: r}}
}

func delOp(key, end string) *pb.RequestOp {
	r := &pb.DeleteRangeRequest{Key: []byte(key), PrevKv: true}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: r}}
}

func txnOp(r *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}
}

func cmpValue(key string, res pb.Compare_CompareResult, v string) *pb.Compare {
	return &pb.Compare{Key: []byte(key), Target: pb.Compare_VALUE, Result: res, TargetUnion: &pb.Compare_Value{Value: []byte(v)}}
}

func cmpVersion(key string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(key), Target: pb.Compare_VERSION, Result: res, TargetUnion: &pb.Compare_Version{Version: v}}
}

func cmpCreate(key string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(key), Target: pb.Compare_CREATE, Result: res, TargetUnion: &pb.Compare_CreateRevision{CreateRevision: v}}
}

func cmpMod(key string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(key), Target: pb.Compare_MOD, Result: res, TargetUnion: &pb.Compare_ModRevision{ModRevision: v}}
}

func cmpLease(key string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(key), Target: pb.Compare_LEASE, Result: res, TargetUnion: &pb.Compare_Lease{Lease: v}}
}

func withEnd(c *pb.Compare, end string) *pb.Compare { c.RangeEnd = []byte(end); return c }

// TestTxnCompare checks compare semantics against this state:
//
//	a  "1"  create 2 mod 2 version 1
//	b  "2"  create 3 mod 5 version 2 lease 7
//	c  ""   create 4 mod 4 version 1
func TestTxnCompare(t *testing.T) {
	const (
		EQ = pb.Compare_EQUAL
		NE = pb.Compare_NOT_EQUAL
		GT = pb.Compare_GREATER
		LT = pb.Compare_LESS
	)
	cases := []struct {
		name string
		cmps []*pb.Compare
		want bool
	}{
		{"no compares", nil, true},
		{"value equal", []*pb.Compare{cmpValue("a", EQ, "1")}, true},
		{"value not equal", []*pb.Compare{cmpValue("a", NE, "1")}, false},
		{"value greater", []*pb.Compare{cmpValue("b", GT, "1")}, true},
		{"value less", []*pb.Compare{cmpValue("a", LT, "2")}, true},
		{"empty value equals empty", []*pb.Compare{cmpValue("c", EQ, "")}, true},
		{"empty value with no target", []*pb.Compare{{Key: []byte("c"), Target: pb.Compare_VALUE, Result: EQ}}, true},
		{"value on a missing key fails equal", []*pb.Compare{cmpValue("zz", EQ, "")}, false},
		{"value on a missing key fails not equal", []*pb.Compare{cmpValue("zz", NE, "x")}, false},
		{"value on a missing key fails less", []*pb.Compare{cmpValue("zz", LT, "x")}, false},
		{"version on a missing key is 0", []*pb.Compare{cmpVersion("zz", EQ, 0)}, true},
		{"version on a missing key is not greater than 0", []*pb.Compare{cmpVersion("zz", GT, 0)}, false},
		{"create on a missing key is 0", []*pb.Compare{cmpCreate("zz", EQ, 0)}, true},
		{"mod on a missing key is less than 1", []*pb.Compare{cmpMod("zz", LT, 1)}, true},
		{"lease on a missing key is 0", []*pb.Compare{cmpLease("zz", EQ, 0)}, true},
		{"version", []*pb.Compare{cmpVersion("b", EQ, 2)}, true},
		{"create", []*pb.Compare{cmpCreate("b", EQ, 3)}, true},
		{"mod", []*pb.Compare{cmpMod("b", EQ, 5)}, true},
		{"mod greater", []*pb.Compare{cmpMod("b", GT, 4)}, true},
		{"mod less fails", []*pb.Compare{cmpMod("b", LT, 5)}, false},
		{"lease", []*pb.Compare{cmpLease("b", EQ, 7)}, true},
		{"lease of a key without one", []*pb.Compare{cmpLease("a", EQ, 0)}, true},
		{"target and union disagree: compares with 0", []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_MOD, Result: GT, TargetUnion: &pb.Compare_Version{Version: 100}}}, true},
		{"every compare must hold", []*pb.Compare{cmpValue("a", EQ, "1"), cmpVersion("b", EQ, 1)}, false},
		{"all hold", []*pb.Compare{cmpValue("a", EQ, "1"), cmpVersion("b", EQ, 2), cmpCreate("c", EQ, 4)}, true},
		{"range: every key must match", []*pb.Compare{withEnd(cmpVersion("a", EQ, 1), "c")}, false},
		{"range: all keys match", []*pb.Compare{withEnd(cmpVersion("a", GT, 0), "d")}, true},
		{"range: mod below", []*pb.Compare{withEnd(cmpMod("a", LT, 6), "\x00")}, true},
		{"range from key", []*pb.Compare{withEnd(cmpCreate("b", GT, 2), "\x00")}, true},
		{"range from key fails", []*pb.Compare{withEnd(cmpCreate("a", GT, 2), "\x00")}, false},
		{"empty range value fails", []*pb.Compare{withEnd(cmpValue("x", EQ, ""), "y")}, false},
		{"empty range version is 0", []*pb.Compare{withEnd(cmpVersion("x", EQ, 0), "y")}, true},
		{"range end before key is empty", []*pb.Compare{withEnd(cmpVersion("c", EQ, 0), "a")}, true},
		{"unknown result holds", []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_VERSION, Result: pb.Compare_CompareResult(9)}}, true},
	}
	ts := newTestStore(t)
	ts.put("a", "1")                                                          // 2
	ts.put("b", "1")                                                          // 3
	ts.put("c", "")                                                           // 4
	ts.putReq(&pb.PutRequest{Key: []byte("b"), Value: []byte("2"), Lease: 7}) // 5
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := ts.s.NewBatch()
			defer b.Abort()
			resp, err := b.Txn(&pb.TxnRequest{
				Compare: c.cmps,
				Success: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: []byte("a")})},
				Failure: []*pb.RequestOp{putOp("failed", "1"), rangeOp(&pb.RangeRequest{Key: []byte("b")})},
			}, lease7)
			if err != nil {
				t.Fatal(err)
			}
			if resp.Succeeded != c.want {
				t.Fatalf("succeeded %v, want %v", resp.Succeeded, c.want)
			}
			if len(resp.Responses) != 1+btoi(!c.want) {
				t.Fatalf("%d responses for the branch taken", len(resp.Responses))
			}
			wantRev := int64(5)
			if !c.want {
				wantRev = 6
				if resp.Responses[0].GetResponsePut() == nil || resp.Responses[1].GetResponseRange() == nil {
					t.Fatalf("failure branch responses %v", resp.Responses)
				}
			} else if resp.Responses[0].GetResponseRange() == nil {
				t.Fatalf("success branch responses %v", resp.Responses)
			}
			if resp.Header.Revision != wantRev || b.Rev() != wantRev {
				t.Fatalf("revision %d (batch %d), want %d", resp.Header.Revision, b.Rev(), wantRev)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestTxnReadsOwnWrites checks that the operations of a transaction see the
// writes before them, at the transaction's revision.
func TestTxnReadsOwnWrites(t *testing.T) {
	ts := newTestStore(t)
	ts.put("k", "old") // 2
	ts.put("d", "1")   // 3

	resp, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{
		rangeOp(&pb.RangeRequest{Key: []byte("k")}), // 0: before any write
		putOp("k", "new"), // 1
		rangeOp(&pb.RangeRequest{Key: []byte("k")}),                                  // 2: sees the put
		rangeOp(&pb.RangeRequest{Key: []byte("k"), Revision: 3}),                     // 3: the revision before the txn
		putReqOp(&pb.PutRequest{Key: []byte("n"), Value: []byte("1"), PrevKv: true}), // 4
		putReqOp(&pb.PutRequest{Key: []byte("k"), IgnoreValue: true, PrevKv: true}),  // 5: prev is this txn's put
		delOp("d", ""), // 6
		rangeOp(&pb.RangeRequest{Key: []byte("d")}),                                            // 7: gone
		rangeOp(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("\x00"), CountOnly: true}), // 8
	}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision != 4 || ts.s.Rev() != 4 {
		t.Fatalf("txn revision %d (store %d), want 4", resp.Header.Revision, ts.s.Rev())
	}
	r := resp.Responses
	r0 := r[0].GetResponseRange()
	if r0.Header.Revision != 3 {
		t.Errorf("range before the first write has header revision %d, want 3", r0.Header.Revision)
	}
	checkKV(t, "range before the write", r0.Kvs[0], "k", "old", 2, 2, 1, 0)
	if got := r[1].GetResponsePut().Header.Revision; got != 4 {
		t.Errorf("put header revision %d, want 4", got)
	}
	r2 := r[2].GetResponseRange()
	if r2.Header.Revision != 4 {
		t.Errorf("range after the write has header revision %d, want 4", r2.Header.Revision)
	}
	checkKV(t, "range after the write", r2.Kvs[0], "k", "new", 2, 4, 2, 0)
	checkKV(t, "range at the revision before the txn", r[3].GetResponseRange().Kvs[0], "k", "old", 2, 2, 1, 0)
	if pk := r[4].GetResponsePut().PrevKv; pk != nil {
		t.Errorf("prev kv of a new key: %v", pk)
	}
	checkKV(t, "prev kv from the same txn", r[5].GetResponsePut().PrevKv, "k", "new", 2, 4, 2, 0)
	if dr := r[6].GetResponseDeleteRange(); dr.Deleted != 1 || dr.Header.Revision != 4 {
		t.Errorf("delete response %v", dr)
	}
	if kvs := r[7].GetResponseRange().Kvs; len(kvs) != 0 {
		t.Errorf("deleted key still visible in the txn: %v", kvs)
	}
	if c := r[8].GetResponseRange().Count; c != 2 {
		t.Errorf("count %d in the txn, want 2 (k, n)", c)
	}
	// Writing a key twice in one txn gives it two versions at one revision.
	checkKV(t, "k after the txn", ts.get("k", 0), "k", "new", 2, 4, 3, 0)
	checkKV(t, "n after the txn", ts.get("n", 0), "n", "1", 4, 4, 1, 0)
	checkKV(t, "k before the txn", ts.get("k", 3), "k", "old", 2, 2, 1, 0)
	if kv := ts.get("d", 0); kv != nil {
		t.Errorf("d after the txn: %v", kv)
	}
	checkKV(t, "d before the txn", ts.get("d", 3), "d", "1", 3, 3, 1, 0)

	// Delete then put in one txn: the put starts a new life.
	if _, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{delOp("k", ""), rangeOp(&pb.RangeRequest{Key: []byte("k")})}}); err != nil {
		t.Fatal(err)
	}
	resp, err = ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{putOp("n", "2"), delOp("n", ""), putOp("n", "3")}})
	if err != nil {
		t.Fatal(err)
	}
	checkKV(t, "n recreated in one txn", ts.get("n", 0), "n", "3", 6, 6, 1, 0)
}

// TestTxnNested checks that nested compares are all evaluated against the
// state before the transaction, and that each nested transaction takes the
// branch its own compares chose.
func TestTxnNested(t *testing.T) {
	ts := newTestStore(t)
	ts.put("k", "old") // 2
	const EQ = pb.Compare_EQUAL

	resp, err := ts.txn(&pb.TxnRequest{
		Compare: []*pb.Compare{cmpValue("k", EQ, "old")},
		Success: []*pb.RequestOp{
			putOp("k", "new"),
			// A: its compare sees "old" although k was just written: false.
			txnOp(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpValue("k", EQ, "new")},
				Success: []*pb.RequestOp{putOp("a", "then")},
				Failure: []*pb.RequestOp{
					putOp("a", "else"),
					// A1: true.
					txnOp(&pb.TxnRequest{
						Compare: []*pb.Compare{cmpVersion("k", EQ, 1)},
						Success: []*pb.RequestOp{putOp("a1", "then"), rangeOp(&pb.RangeRequest{Key: []byte("k")})},
						Failure: []*pb.RequestOp{putOp("a1", "else")},
					}),
				},
			}),
			// B: false. Its success branch would fail (ignore_value on a
			// missing key), but it is not taken, so it must not be checked.
			txnOp(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpVersion("k", EQ, 2)},
				Success: []*pb.RequestOp{putReqOp(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})},
				Failure: []*pb.RequestOp{putOp("b", "else")},
			}),
			// C: true; its failure branch would fail.
			txnOp(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpValue("k", EQ, "old")},
				Success: []*pb.RequestOp{putOp("c", "then")},
				Failure: []*pb.RequestOp{putReqOp(&pb.PutRequest{Key: []byte("missing"), IgnoreLease: true})},
			}),
		},
	})
	if err != nil {
		t.Fatalf("txn: %v", err)
	}
	if !resp.Succeeded || resp.Header.Revision != 3 {
		t.Fatalf("txn: succeeded %v at %d", resp.Succeeded, resp.Header.Revision)
	}
	want := map[string]string{"k": "new", "a": "else", "a1": "then", "b": "else", "c": "then"}
	for k, v := range want {
		kv := ts.get(k, 0)
		if kv == nil || string(kv.Value) != v {
			t.Errorf("%s = %v, want %q", k, kv, v)
		}
	}
	a := resp.Responses[1].GetResponseTxn()
	if a == nil || a.Succeeded || len(a.Responses) != 2 {
		t.Fatalf("nested A response %v", a)
	}
	if a.Header.GetRevision() != 0 {
		t.Errorf("nested txn header revision %d, want an empty header as etcd", a.Header.GetRevision())
	}
	a1 := a.Responses[1].GetResponseTxn()
	if a1 == nil || !a1.Succeeded {
		t.Fatalf("nested A1 response %v", a1)
	}
	checkKV(t, "range in A1 sees the outer put", a1.Responses[1].GetResponseRange().Kvs[0], "k", "new", 2, 3, 2, 0)
	if b := resp.Responses[2].GetResponseTxn(); b.Succeeded {
		t.Errorf("nested B succeeded")
	}
	if c := resp.Responses[3].GetResponseTxn(); !c.Succeeded {
		t.Errorf("nested C failed")
	}
}

// TestTxnFailureLeavesNoTrace checks transactions whose chosen branch fails:
// they answer an error and change nothing, and the next request in the same
// batch takes the revision they would have taken.
func TestTxnFailureLeavesNoTrace(t *testing.T) {
	cases := []struct {
		name string
		req  *pb.TxnRequest
		err  error
	}{
		{"ignore_value on a missing key", &pb.TxnRequest{Success: []*pb.RequestOp{
			putOp("x", "1"), delOp("k", ""), putReqOp(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true}),
		}}, ErrKeyNotFound},
		{"ignore_lease on a missing key", &pb.TxnRequest{Success: []*pb.RequestOp{
			putOp("x", "1"), putReqOp(&pb.PutRequest{Key: []byte("missing"), IgnoreLease: true}),
		}}, ErrKeyNotFound},
		{"unknown lease", &pb.TxnRequest{Success: []*pb.RequestOp{
			putOp("x", "1"), putReqOp(&pb.PutRequest{Key: []byte("y"), Value: []byte("1"), Lease: 99}),
		}}, ErrLeaseNotFound},
		{"future revision", &pb.TxnRequest{Success: []*pb.RequestOp{
			putOp("x", "1"), rangeOp(&pb.RangeRequest{Key: []byte("k"), Revision: 4}),
		}}, ErrFutureRev},
		{"compacted revision", &pb.TxnRequest{Success: []*pb.RequestOp{
			putOp("x", "1"), rangeOp(&pb.RangeRequest{Key: []byte("k"), Revision: 1}),
		}}, ErrCompacted},
		{"in a nested txn", &pb.TxnRequest{Success: []*pb.RequestOp{
			putOp("x", "1"), delOp("k", ""),
			txnOp(&pb.TxnRequest{Failure: []*pb.RequestOp{putOp("z", "1")}, Success: []*pb.RequestOp{
				txnOp(&pb.TxnRequest{Success: []*pb.RequestOp{putReqOp(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})}}),
			}}),
		}}, ErrKeyNotFound},
		{"in the failure branch", &pb.TxnRequest{
			Compare: []*pb.Compare{cmpValue("k", pb.Compare_EQUAL, "no")},
			Success: []*pb.RequestOp{putOp("x", "1")},
			Failure: []*pb.RequestOp{putOp("x", "1"), putReqOp(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})},
		}, ErrKeyNotFound},
		// The api layer lets this through: a from-key delete covers no put
		// in etcd's duplicate check. k exists before the txn, so the
		// pre-check passes, and the put finds k deleted by the same txn.
		{"ignore_value on a key the same txn deleted", &pb.TxnRequest{Success: []*pb.RequestOp{
			putOp("x", "1"), delOp("k", "\x00"), putReqOp(&pb.PutRequest{Key: []byte("k"), IgnoreValue: true}),
		}}, ErrKeyNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := newTestStore(t)
			ts.put("k", "v") // 2
			ts.put("j", "v") // 3
			ts.compact(2)

			b := ts.s.NewBatch()
			_, err := b.Txn(c.req, lease7)
			if err != c.err {
				b.Abort()
				t.Fatalf("txn: %v, want %v", err, c.err)
			}
			if b.Rev() != 3 {
				t.Errorf("failed txn moved the batch to revision %d, want 3", b.Rev())
			}
			rr, err := b.Range(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00")})
			if err != nil {
				t.Fatal(err)
			}
			if got := keysOf(rr.Kvs); !slices.Equal(got, []string{"j", "k"}) {
				t.Errorf("BUG: failed txn left a trace in its batch: keys %q, want [j k]", got)
			}
			pr, err := b.Put(&pb.PutRequest{Key: []byte("after"), Value: []byte("1")}, noLeases)
			if err != nil {
				t.Fatal(err)
			}
			if pr.Header.Revision != 4 {
				t.Errorf("put after the failed txn at %d, want 4", pr.Header.Revision)
			}
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			if got := ts.latestKeys(); !slices.Equal(got, []string{"after", "j", "k"}) {
				t.Errorf("BUG: failed txn left a trace after commit: latest keys %q, want [after j k]", got)
			}
			hist := ts.historyVersions()
			if len(hist) != 0 {
				t.Errorf("BUG: failed txn left a trace in history (every key has only its live version): %v", hist)
			}
			if kv := ts.get("k", 0); kv == nil || kv.ModRevision != 2 {
				t.Errorf("BUG: k after the failed txn: %v, want unchanged (mod 2)", kv)
			}
		})
	}
}

// TestTxnCompareSeesBatchAndTables checks how a single-key compare reads its
// key (the key filter, the key cache, or a point lookup): it sees the writes
// of the requests before it in its batch, and keys that left the memtable
// for the tables.
func TestTxnCompareSeesBatchAndTables(t *testing.T) {
	ts := newTestStore(t)
	ts.put("flushed", "1") // 2
	if err := ts.s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	b := ts.s.NewBatch()
	if _, err := b.Put(&pb.PutRequest{Key: []byte("staged"), Value: []byte("v")}, noLeases); err != nil { // 3
		t.Fatal(err)
	}
	if _, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("flushed")}); err != nil { // 4
		t.Fatal(err)
	}
	if _, err := b.Put(&pb.PutRequest{Key: []byte("twice"), Value: []byte("1")}, noLeases); err != nil { // 5
		t.Fatal(err)
	}
	if _, err := b.Put(&pb.PutRequest{Key: []byte("twice"), Value: []byte("2"), Lease: 7}, lease7); err != nil { // 6: in the key cache now
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cmp  *pb.Compare
		want bool
	}{
		{"a put earlier in the batch", cmpMod("staged", pb.Compare_EQUAL, 3), true},
		{"its value", cmpValue("staged", pb.Compare_EQUAL, "v"), true},
		{"a key deleted earlier in the batch", cmpVersion("flushed", pb.Compare_EQUAL, 0), true},
		{"the deleted key's value", cmpValue("flushed", pb.Compare_EQUAL, "1"), false},
		{"an overwrite earlier in the batch", cmpMod("twice", pb.Compare_EQUAL, 6), true},
		{"its mod revision is not the first", cmpMod("twice", pb.Compare_LESS, 6), false},
		{"its create revision", cmpCreate("twice", pb.Compare_EQUAL, 5), true},
		{"its version", cmpVersion("twice", pb.Compare_EQUAL, 2), true},
		{"its lease", cmpLease("twice", pb.Compare_EQUAL, 7), true},
		{"its value", cmpValue("twice", pb.Compare_EQUAL, "2"), true},
		{"a key never written", cmpMod("never", pb.Compare_EQUAL, 0), true},
		{"a key never written has no version", cmpVersion("never", pb.Compare_GREATER, 0), false},
	}
	for _, c := range cases {
		resp, err := b.Txn(&pb.TxnRequest{Compare: []*pb.Compare{c.cmp}}, noLeases)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Succeeded != c.want {
			t.Errorf("%s: succeeded %v, want %v", c.name, resp.Succeeded, c.want)
		}
	}
	b.Abort()

	// Committed state in the tables, through a batch and a read-only txn.
	for _, c := range []*pb.Compare{cmpMod("flushed", pb.Compare_EQUAL, 2), cmpValue("flushed", pb.Compare_EQUAL, "1"), cmpCreate("flushed", pb.Compare_EQUAL, 2)} {
		b := ts.s.NewBatch()
		resp, err := b.Txn(&pb.TxnRequest{Compare: []*pb.Compare{c}}, noLeases)
		b.Abort()
		if err != nil || !resp.Succeeded {
			t.Errorf("compare %v on a flushed key in a batch: succeeded %v, err %v", c, resp.GetSucceeded(), err)
		}
		ro, err := ts.s.ReadTxn(&pb.TxnRequest{Compare: []*pb.Compare{c}})
		if err != nil || !ro.Succeeded {
			t.Errorf("compare %v on a flushed key in a read-only txn: succeeded %v, err %v", c, ro.GetSucceeded(), err)
		}
	}
}
