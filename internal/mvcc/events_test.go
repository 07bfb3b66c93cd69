package mvcc

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/plinthdb/plinth/internal/storage"
)

func eventStrings(evs []*mvccpb.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%s %s=%s@%d/v%d", ev.Type, ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision, ev.Kv.Version)
	}
	return out
}

func checkEvents(t *testing.T, what string, got []*mvccpb.Event, want ...string) {
	t.Helper()
	g := eventStrings(got)
	if fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("%s:\n got %q\nwant %q", what, g, want)
	}
}

// TestEventsOrder checks the order etcd reports one request's changes in: a
// transaction's operations in order, a delete's keys in key order, and a key
// put and deleted (or deleted and put) by one transaction.
func TestEventsOrder(t *testing.T) {
	ts := newTestStore(t)
	ts.put("b", "1") // 2
	ts.put("a", "1") // 3
	ts.put("c", "1") // 4
	if _, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{putOp("z", "1"), delOp("a", "c"), putOp("c", "2")}}); err != nil {
		t.Fatal(err) // 5
	}
	// A put, then a delete to the end of the key space that covers it.
	if _, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{putOp("y", "1"), delOp("x", "\x00")}}); err != nil {
		t.Fatal(err) // 6
	}
	// A delete to the end of the key space, then a put of a key it deleted.
	ts.put("q", "1") // 7
	if _, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{delOp("p", "\x00"), putOp("q", "2")}}); err != nil {
		t.Fatal(err) // 8
	}
	evs, next, err := ts.s.Events(1, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if next != 9 {
		t.Fatalf("next %d, want 9", next)
	}
	checkEvents(t, "all events", evs,
		"PUT b=1@2/v1", "PUT a=1@3/v1", "PUT c=1@4/v1",
		"PUT z=1@5/v1", "DELETE a=@5/v0", "DELETE b=@5/v0", "PUT c=2@5/v2",
		"PUT y=1@6/v1", "DELETE y=@6/v0", "DELETE z=@6/v0",
		"PUT q=1@7/v1",
		"DELETE q=@8/v0", "PUT q=2@8/v1")

	// A limit stops at a revision boundary, and next resumes after it.
	evs, next, err = ts.s.Events(4, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if next != 6 || len(evs) != 5 {
		t.Fatalf("limit 2 from 4: next %d, %d events, want 6, 5", next, len(evs))
	}
	evs, next, err = ts.s.Events(5, 0, func(k []byte) bool { return bytes.Equal(k, []byte("c")) })
	if err != nil {
		t.Fatal(err)
	}
	checkEvents(t, "events of c from 5", evs, "PUT c=2@5/v2")
	if next != 9 {
		t.Fatalf("next %d, want 9", next)
	}
	if evs, next, err = ts.s.Events(9, 0, nil); err != nil || len(evs) != 0 || next != 9 {
		t.Fatalf("events from the future: %v %d %v", evs, next, err)
	}

	// Compaction: the compaction revision itself stays readable.
	ts.compact(5)
	if _, _, err := ts.s.Events(4, 0, nil); err != ErrCompacted {
		t.Fatalf("events below the compaction: %v, want ErrCompacted", err)
	}
	evs, _, err = ts.s.Events(5, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkEvents(t, "events at the compaction revision", evs, "PUT z=1@5/v1", "DELETE a=@5/v0", "DELETE b=@5/v0", "PUT c=2@5/v2")
	if first := ts.firstEventRev(); first != 5 {
		t.Fatalf("oldest event after compaction at 5 is at %d", first)
	}
	ts.reopen()
	evs, _, err = ts.s.Events(8, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkEvents(t, "events after reopen", evs, "DELETE q=@8/v0", "PUT q=2@8/v1")
}

// BenchmarkEventsCatchUp reads the last 1,000 changes of a prefix of 1,000,
// 100,000 and 1,000,000 keys, as a watcher resuming from 1,000 revisions back
// does: the cost follows the changes, not the keys under the prefix (issue
// 16 compares the first and the last).
func BenchmarkEventsCatchUp(b *testing.B) {
	const changes = 1000
	value := make([]byte, 256)
	for _, keys := range []int{1_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			ts := newTestStore(b)
			const fill = 5000 // keys per batch while filling
			for lo := 0; lo < keys; lo += fill {
				batch := ts.s.NewBatch()
				for k := lo; k < min(lo+fill, keys); k++ {
					if _, err := batch.Put(&pb.PutRequest{Key: fmt.Appendf(nil, "p/%08d", k), Value: value}, noLeases); err != nil {
						b.Fatal(err)
					}
				}
				if err := batch.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			rnd := rand.New(rand.NewPCG(1, 2))
			batch := ts.s.NewBatch()
			for i := 0; i < changes; i++ {
				if _, err := batch.Put(&pb.PutRequest{Key: fmt.Appendf(nil, "p/%08d", rnd.IntN(keys)), Value: value}, noLeases); err != nil {
					b.Fatal(err)
				}
			}
			if err := batch.Commit(); err != nil {
				b.Fatal(err)
			}
			from := ts.s.Rev() - changes + 1
			prefix := []byte("p/")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				evs, _, err := ts.s.Events(from, 0, func(k []byte) bool { return bytes.HasPrefix(k, prefix) })
				if err != nil {
					b.Fatal(err)
				}
				if len(evs) != changes {
					b.Fatalf("%d events, want %d", len(evs), changes)
				}
			}
		})
	}
}

// TestEventsOfAStoreWithoutIndex: a store whose history predates the event
// index answers a read from before the index's start as compacted, never
// with silently missing changes.
func TestEventsOfAStoreWithoutIndex(t *testing.T) {
	ts := newTestStore(t)
	ts.put("a", "1") // 2
	ts.put("a", "2") // 3
	// Remove the index, as a store written before it existed lacks it.
	if err := ts.db.DeleteRange([]byte{storage.PrefixEvents}, []byte{storage.PrefixEvents + 1}, nil); err != nil {
		t.Fatal(err)
	}
	ts.reopen()
	if _, _, err := ts.s.Events(2, 0, nil); err != ErrCompacted {
		t.Fatalf("events from before the index: %v, want ErrCompacted", err)
	}
	if got := ts.s.EventsFrom(); got != 4 {
		t.Fatalf("EventsFrom %d, want 4", got)
	}
	ts.put("a", "3") // 4
	evs, _, err := ts.s.Events(4, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkEvents(t, "events after the index began", evs, "PUT a=3@4/v3")
	ts.reopen()
	if _, _, err := ts.s.Events(3, 0, nil); err != ErrCompacted {
		t.Fatalf("after a reopen, events from before the index: %v, want ErrCompacted", err)
	}
	// A fresh store serves from revision 1.
	fresh := newTestStore(t)
	if _, _, err := fresh.s.Events(1, 0, nil); err != nil {
		t.Fatalf("fresh store: %v", err)
	}
}
