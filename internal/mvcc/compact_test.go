package mvcc

import (
	"fmt"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// TestCompaction checks what a physical compaction keeps: for each key the
// newest version at or before the compaction revision (unless it is a
// tombstone) and every later version. History holds them all but a live
// first version, which is in the latest space only.
func TestCompaction(t *testing.T) {
	ts := newTestStore(t)
	ts.put("a", "1")        // 2
	ts.put("a", "2")        // 3
	ts.put("a", "3")        // 4
	ts.put("gone", "1")     // 5
	ts.del("gone", "")      // 6
	ts.put("late", "1")     // 7
	ts.del("late", "")      // 8  (tombstone after the compaction revision)
	ts.put("a\x00", "1")    // 9
	ts.put("re", "1")       // 10
	ts.del("re", "")        // 11
	ts.put("re", "2")       // 12
	ts.put("\xff", "1")     // 13
	ts.put("a\x00", "2")    // 14
	ts.put("untouched", "") // 15

	steps := []struct {
		name string
		rev  int64
		want map[string][]int64 // history revisions per key, newest first
	}{
		// re, \xff and untouched are live first versions: in latest only.
		{"at 3", 3, map[string][]int64{
			"a": {4, 3}, "gone": {6, 5}, "late": {8, 7}, "a\x00": {14, 9}, "re": {11, 10},
		}},
		{"at 7: a tombstone at or before the revision removes the key", 7, map[string][]int64{
			"a": {4}, "late": {8, 7}, "a\x00": {14, 9}, "re": {11, 10},
		}},
		{"at 11: recreated key keeps only its new life", 11, map[string][]int64{
			"a": {4}, "a\x00": {14, 9},
		}},
		{"at 15: the current revision", 15, map[string][]int64{
			"a": {4}, "a\x00": {14},
		}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			// Everything readable at or after the revision before compaction.
			before := map[int64]*pb.RangeResponse{}
			for rev := st.rev; rev <= 15; rev++ {
				resp, err := ts.s.Range(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: rev})
				if err != nil {
					t.Fatal(err)
				}
				before[rev] = resp
			}
			ts.compact(st.rev)
			if got := ts.s.CompactRev(); got != st.rev {
				t.Fatalf("compact revision %d, want %d", got, st.rev)
			}
			got := ts.historyVersions()
			if len(got) != len(st.want) {
				t.Errorf("history holds keys %v, want %v", got, st.want)
			}
			for k, revs := range st.want {
				if !slices.Equal(got[k], revs) {
					t.Errorf("history of %q: %v, want %v", k, got[k], revs)
				}
			}
			for rev := st.rev; rev <= 15; rev++ {
				resp, err := ts.s.Range(&pb.RangeRequest{Key: []byte("\x00"), RangeEnd: []byte("\x00"), Revision: rev})
				if err != nil {
					t.Fatalf("range at %d after compaction at %d: %v", rev, st.rev, err)
				}
				if !slices.Equal(keysOf(resp.Kvs), keysOf(before[rev].Kvs)) || resp.Count != before[rev].Count {
					t.Errorf("range at %d changed by compaction: %q, was %q", rev, keysOf(resp.Kvs), keysOf(before[rev].Kvs))
				}
				for i, kv := range resp.Kvs {
					if kv.String() != before[rev].Kvs[i].String() {
						t.Errorf("range at %d: %v, was %v", rev, kv, before[rev].Kvs[i])
					}
				}
			}
			if _, err := ts.s.Range(&pb.RangeRequest{Key: []byte("a"), Revision: st.rev - 1}); err != ErrCompacted {
				t.Errorf("range below the compaction: %v, want ErrCompacted", err)
			}
		})
	}
	if got := ts.latestKeys(); !slices.Equal(got, []string{"a", "a\x00", "re", "untouched", "\xff"}) {
		t.Errorf("latest space after compaction: %q", got)
	}
}

// TestCompactRequests checks the answers to compaction requests.
func TestCompactRequests(t *testing.T) {
	ts := newTestStore(t)
	b := ts.s.NewBatch()
	resp, done, err := b.Compact(0)
	if err != nil {
		t.Fatalf("compact 0 on a new store: %v", err)
	}
	if resp.Header.Revision != 1 {
		t.Errorf("compact header revision %d, want 1", resp.Header.Revision)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done, 0)
	ts.put("k", "1") // 2
	ts.put("k", "2") // 3
	ts.put("k", "3") // 4

	cases := []struct {
		name string
		rev  int64
		err  error
	}{
		{"zero again", 0, ErrCompacted},
		{"future", 5, ErrFutureRev},
		{"to 2", 2, nil},
		{"same revision again", 2, ErrCompacted},
		{"below", 1, ErrCompacted},
		{"negative", -1, ErrCompacted},
		{"to the current revision", 4, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := ts.s.NewBatch()
			resp, done, err := b.Compact(c.rev)
			if err != c.err {
				b.Abort()
				t.Fatalf("compact %d: %v, want %v", c.rev, err, c.err)
			}
			if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			if err != nil {
				return
			}
			if resp.Header.Revision != 4 || ts.s.Rev() != 4 {
				t.Errorf("compaction changed the revision: header %d, store %d", resp.Header.Revision, ts.s.Rev())
			}
			waitDone(t, done, c.rev)
			if got := ts.s.CompactRev(); got != c.rev {
				t.Errorf("compact revision %d, want %d", got, c.rev)
			}
		})
	}

	// A compaction in a batch applies to the requests after it.
	b = ts.s.NewBatch()
	if _, err := b.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("4")}, noLeases); err != nil { // 5
		t.Fatal(err)
	}
	if _, _, err := b.Compact(5); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Range(&pb.RangeRequest{Key: []byte("k"), Revision: 4}); err != ErrCompacted {
		t.Errorf("range in the batch below its compaction: %v, want ErrCompacted", err)
	}
	if _, err := b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: []byte("k"), Revision: 4})}}, noLeases); err != ErrCompacted {
		t.Errorf("txn in the batch below its compaction: %v, want ErrCompacted", err)
	}
	b.Abort()
	if got := ts.s.CompactRev(); got != 4 {
		t.Errorf("aborted compaction moved the compact revision to %d", got)
	}
}

// TestReopen checks that revision, compaction revision, versions and history
// survive closing and reopening the database.
func TestReopen(t *testing.T) {
	ts := newTestStore(t)
	ts.put("a", "1") // 2
	ts.put("a", "2") // 3
	ts.put("b", "1") // 4
	ts.del("b", "")  // 5
	ts.put("c", "1") // 6
	ts.compact(3)
	ts.reopen()

	if got := ts.s.Rev(); got != 6 {
		t.Fatalf("revision after reopen %d, want 6", got)
	}
	if got := ts.s.CompactRev(); got != 3 {
		t.Fatalf("compact revision after reopen %d, want 3", got)
	}
	if _, err := ts.s.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 2}); err != ErrCompacted {
		t.Fatalf("range below the compaction after reopen: %v", err)
	}
	checkKV(t, "a at 3", ts.get("a", 3), "a", "2", 2, 3, 2, 0)
	checkKV(t, "b at 4", ts.get("b", 4), "b", "1", 4, 4, 1, 0)
	if got := ts.put("a", "3").Header.Revision; got != 7 {
		t.Fatalf("first put after reopen at %d, want 7", got)
	}
	checkKV(t, "a", ts.get("a", 0), "a", "3", 2, 7, 3, 0)
	b := ts.s.NewBatch()
	if _, _, err := b.Compact(3); err != ErrCompacted {
		t.Fatalf("compact at the old compaction after reopen: %v, want ErrCompacted", err)
	}
	b.Abort()

	// A store that was never compacted reopens with compaction revision -1.
	fresh := newTestStore(t)
	fresh.put("x", "1")
	fresh.reopen()
	if fresh.s.Rev() != 2 || fresh.s.CompactRev() != -1 {
		t.Fatalf("never-compacted store reopened at %d, compacted %d; want 2, -1", fresh.s.Rev(), fresh.s.CompactRev())
	}
}

// TestReopenResumesCompaction simulates a crash after a compaction was
// committed but before its physical part ran: Open must finish it.
func TestReopenResumesCompaction(t *testing.T) {
	ts := newTestStore(t)
	ts.put("a", "1") // 2
	ts.put("a", "2") // 3
	ts.put("b", "1") // 4
	ts.del("b", "")  // 5
	ts.close()

	db, err := storage.Open(ts.dir, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	wb := db.NewBatch()
	if err := storage.PutMetaUint64(wb, storage.MetaCompacted, 5); err != nil {
		t.Fatal(err)
	}
	if err := wb.Commit(nil); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	ts.open()
	if got := ts.s.CompactRev(); got != 5 {
		t.Fatalf("compact revision %d, want 5", got)
	}
	waitDone(t, ts.s.compactor.doneCh(5), 5)
	hist := ts.historyVersions()
	if len(hist) != 1 || !slices.Equal(hist["a"], []int64{3}) {
		t.Fatalf("history after resumed compaction: %v, want a: [3]", hist)
	}
	done, err := storage.GetMetaUint64(ts.db, storage.MetaCompactDone)
	if err != nil || done != 5 {
		t.Fatalf("compact-done mark %d (%v), want 5", done, err)
	}
}

// TestCompactionDuringWrites runs a physical compaction while overwrites and
// deletes move the keys' live versions into history, and checks that reads
// at the compaction revision and after it still see every key as it was.
func TestCompactionDuringWrites(t *testing.T) {
	ts := newTestStore(t)
	const keys = 2000
	key := func(i int) string { return fmt.Sprintf("k%04d", i) }
	ts.commit(func(b *Batch) {
		for round := 0; round < 2; round++ {
			for i := 0; i < keys; i++ {
				if _, err := b.Put(&pb.PutRequest{Key: []byte(key(i)), Value: []byte(fmt.Sprint(round))}, noLeases); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
	compactAt := ts.s.Rev()
	var done <-chan struct{}
	ts.commit(func(b *Batch) {
		var err error
		if _, done, err = b.Compact(compactAt); err != nil {
			t.Fatal(err)
		}
	})
	// While the compactor works through history, every key's live version
	// (at or before compactAt) moves to history: odd keys are overwritten,
	// even keys deleted, one key per batch.
	for i := 0; i < keys; i++ {
		ts.commit(func(b *Batch) {
			var err error
			if i%2 == 1 {
				_, err = b.Put(&pb.PutRequest{Key: []byte(key(i)), Value: []byte("2")}, noLeases)
			} else {
				_, err = b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(key(i))})
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	waitDone(t, done, compactAt)

	at := func(rev int64) *pb.RangeResponse {
		t.Helper()
		resp, err := ts.s.Range(&pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), Revision: rev})
		if err != nil {
			t.Fatalf("range at %d: %v", rev, err)
		}
		return resp
	}
	resp := at(compactAt)
	if len(resp.Kvs) != keys {
		t.Fatalf("range at the compaction revision %d: %d keys, want %d", compactAt, len(resp.Kvs), keys)
	}
	for i, kv := range resp.Kvs {
		checkKV(t, "at the compaction revision", kv, key(i), "1", 2+int64(i), 2+keys+int64(i), 2, 0)
	}
	if resp := at(compactAt + keys/2); len(resp.Kvs) != keys-keys/4 {
		t.Fatalf("range half way through the writes: %d keys, want %d", len(resp.Kvs), keys-keys/4)
	}
	// Each key keeps its live version as of compactAt and the version or
	// tombstone after it; its first version is gone.
	hist := ts.historyVersions()
	for i := 0; i < keys; i++ {
		want := []int64{compactAt + 1 + int64(i), 2 + keys + int64(i)}
		if got := hist[key(i)]; !slices.Equal(got, want) {
			t.Fatalf("history of %s: %v, want %v", key(i), got, want)
		}
	}
}

// TestCompactionVisitsOnlyChangedKeys: a compaction looks only at the keys
// that changed since the previous one, however many keys the store holds,
// and still deletes what it must; a store whose event index does not reach
// back to the previous compaction is walked whole.
func TestCompactionVisitsOnlyChangedKeys(t *testing.T) {
	ts := newTestStore(t)
	const idle, busy = 3000, 10
	for i := range idle {
		ts.put(fmt.Sprintf("idle/%05d", i), "v")
		ts.put(fmt.Sprintf("idle/%05d", i), "w") // a superseded version each
	}
	ts.compact(ts.s.Rev())
	for round := range 5 {
		for i := range busy {
			ts.put(fmt.Sprintf("busy/%02d", i), fmt.Sprint(round))
		}
		ts.del("busy/00", "")
	}
	before := ts.s.compactor.keysVisited.Load()
	rev := ts.s.Rev()
	ts.compact(rev)
	if visited := ts.s.compactor.keysVisited.Load() - before; visited != busy {
		t.Fatalf("compaction visited %d keys; %d changed since the previous one (the store holds %d)", visited, busy, idle+busy)
	}
	if got := ts.historyVersions(); len(got["busy/01"]) != 1 || len(got["busy/00"]) != 0 {
		t.Fatalf("after compaction at %d: busy/01 keeps versions %v (want its live one), busy/00 %v (want none: deleted)", rev, got["busy/01"], got["busy/00"])
	}

	// An index that starts after the previous compaction (a store written
	// before the index existed) cannot say what changed: every key with
	// history is visited.
	ts.put("busy/01", "again") // rev+1: its event is dropped below
	ts.put("busy/02", "again") // rev+2: where the index now starts
	if err := ts.db.DeleteRange([]byte{storage.PrefixEvents}, eventKey(rev+2, 0), nil); err != nil {
		t.Fatal(err)
	}
	before = ts.s.compactor.keysVisited.Load()
	ts.compact(ts.s.Rev())
	if visited := ts.s.compactor.keysVisited.Load() - before; visited < idle {
		t.Fatalf("compaction without the index visited %d keys, want every key with history (%d and more)", visited, idle)
	}
}

// BenchmarkCompaction compacts 1,000 superseded versions in stores of
// different sizes: the cost should follow the 1,000 versions, not the store.
// Building the largest store takes a while: run it with -benchtime=20x.
func BenchmarkCompaction(b *testing.B) {
	for _, keys := range []int{1_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			ts := newTestStore(b)
			const perBatch = 1000
			for i := 0; i < keys; i += perBatch {
				ts.commit(func(batch *Batch) {
					for j := i; j < min(i+perBatch, keys); j++ {
						if _, err := batch.Put(&pb.PutRequest{Key: []byte(fmt.Sprintf("key/%08d", j)), Value: []byte("v")}, noLeases); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
			ts.compact(ts.s.Rev())
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				b.StopTimer()
				// 1,000 keys spread over the store get a new version each.
				ts.commit(func(batch *Batch) {
					for j := 0; j < 1000; j++ {
						k := fmt.Sprintf("key/%08d", (j*keys/1000+n)%keys)
						if _, err := batch.Put(&pb.PutRequest{Key: []byte(k), Value: []byte("w")}, noLeases); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.StartTimer()
				ts.compact(ts.s.Rev())
			}
		})
	}
}
