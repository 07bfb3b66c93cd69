package mvcc

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// testStore is a Store on a real Pebble database in a temp dir, which a test
// can close and reopen.
type testStore struct {
	t   testing.TB
	dir string
	db  *pebble.DB
	s   *Store
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestStore(t testing.TB) *testStore {
	t.Helper()
	ts := &testStore{t: t, dir: t.TempDir()}
	ts.open()
	t.Cleanup(ts.close)
	return ts
}

func (ts *testStore) open() {
	ts.t.Helper()
	db, err := storage.Open(ts.dir, discardLogger(), nil)
	if err != nil {
		ts.t.Fatalf("open pebble: %v", err)
	}
	s, err := Open(db, discardLogger())
	if err != nil {
		_ = db.Close()
		ts.t.Fatalf("open store: %v", err)
	}
	// Let the key filter finish its scan, so that puts after a reopen take
	// the filter's answers rather than falling back to lookups.
	deadline := time.Now().Add(10 * time.Second)
	for !s.filter.ready.Load() {
		if time.Now().After(deadline) {
			ts.t.Fatalf("key filter not built after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	ts.db, ts.s = db, s
}

func (ts *testStore) close() {
	if ts.s != nil {
		ts.s.Close()
		ts.s = nil
	}
	if ts.db != nil {
		if err := ts.db.Close(); err != nil {
			ts.t.Errorf("close pebble: %v", err)
		}
		ts.db = nil
	}
}

// reopen closes the store and its database and opens both again.
func (ts *testStore) reopen() {
	ts.t.Helper()
	ts.close()
	ts.open()
}

func noLeases(int64) bool { return false }

// lease7 knows one lease, 7.
func lease7(id int64) bool { return id == 7 }

// commit runs fn on a new batch and commits it.
func (ts *testStore) commit(fn func(b *Batch)) {
	ts.t.Helper()
	b := ts.s.NewBatch()
	fn(b)
	if err := b.Commit(); err != nil {
		ts.t.Fatalf("commit: %v", err)
	}
}

func (ts *testStore) put(key, value string) *pb.PutResponse {
	ts.t.Helper()
	return ts.putReq(&pb.PutRequest{Key: []byte(key), Value: []byte(value)})
}

func (ts *testStore) putReq(req *pb.PutRequest) *pb.PutResponse {
	ts.t.Helper()
	var resp *pb.PutResponse
	ts.commit(func(b *Batch) {
		var err error
		if resp, err = b.Put(req, lease7); err != nil {
			ts.t.Fatalf("put %q: %v", req.Key, err)
		}
	})
	return resp
}

func (ts *testStore) del(key, end string) *pb.DeleteRangeResponse {
	ts.t.Helper()
	var resp *pb.DeleteRangeResponse
	ts.commit(func(b *Batch) {
		var err error
		req := &pb.DeleteRangeRequest{Key: []byte(key), PrevKv: true}
		if end != "" {
			req.RangeEnd = []byte(end)
		}
		if resp, err = b.DeleteRange(req); err != nil {
			ts.t.Fatalf("delete %q: %v", key, err)
		}
	})
	return resp
}

func (ts *testStore) txn(req *pb.TxnRequest) (*pb.TxnResponse, error) {
	ts.t.Helper()
	var resp *pb.TxnResponse
	var err error
	ts.commit(func(b *Batch) { resp, err = b.Txn(req, lease7) })
	return resp, err
}

// compact compacts at rev and waits for the physical compaction.
func (ts *testStore) compact(rev int64) {
	ts.t.Helper()
	var done <-chan struct{}
	ts.commit(func(b *Batch) {
		var err error
		if _, done, err = b.Compact(rev); err != nil {
			ts.t.Fatalf("compact %d: %v", rev, err)
		}
	})
	waitDone(ts.t, done, rev)
}

func waitDone(t testing.TB, done <-chan struct{}, rev int64) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("physical compaction to %d did not finish in 10s", rev)
	}
}

func (ts *testStore) get(key string, rev int64) *mvccpb.KeyValue {
	ts.t.Helper()
	resp, err := ts.s.Range(&pb.RangeRequest{Key: []byte(key), Revision: rev})
	if err != nil {
		ts.t.Fatalf("get %q at %d: %v", key, rev, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0]
}

// historyVersions returns the revisions of every version kept in the history
// space, by user key, read straight from Pebble.
func (ts *testStore) historyVersions() map[string][]int64 {
	ts.t.Helper()
	iter, err := ts.db.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixHistory}, UpperBound: []byte{storage.PrefixHistory + 1}})
	if err != nil {
		ts.t.Fatal(err)
	}
	defer func() { _ = iter.Close() }()
	out := map[string][]int64{}
	for valid := iter.First(); valid; valid = iter.Next() {
		k, rev, err := decodeHistoryKey(iter.Key())
		if err != nil {
			ts.t.Fatalf("history key: %v", err)
		}
		out[string(k)] = append(out[string(k)], rev)
	}
	return out
}

// latestKeys lists the user keys in the latest space.
func (ts *testStore) latestKeys() []string {
	ts.t.Helper()
	iter, err := ts.db.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixLatest}, UpperBound: []byte{storage.PrefixLatest + 1}})
	if err != nil {
		ts.t.Fatal(err)
	}
	defer func() { _ = iter.Close() }()
	var out []string
	for valid := iter.First(); valid; valid = iter.Next() {
		out = append(out, string(iter.Key()[1:]))
	}
	return out
}

func keysOf(kvs []*mvccpb.KeyValue) []string {
	out := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func wantErr(t testing.TB, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

func kvString(kv *mvccpb.KeyValue) string {
	if kv == nil {
		return "<nil>"
	}
	return kv.String()
}

// checkKV compares the fields of a version.
func checkKV(t testing.TB, what string, kv *mvccpb.KeyValue, key, value string, create, mod, version, lease int64) {
	t.Helper()
	if kv == nil {
		t.Fatalf("%s: no key, want %q", what, key)
	}
	if !bytes.Equal(kv.Key, []byte(key)) || !bytes.Equal(kv.Value, []byte(value)) || kv.CreateRevision != create ||
		kv.ModRevision != mod || kv.Version != version || kv.Lease != lease {
		t.Fatalf("%s: got %s, want key %q value %q create %d mod %d version %d lease %d", what, kvString(kv), key, value, create, mod, version, lease)
	}
}

// firstEventRev returns the revision of the oldest entry of the event index,
// 0 if it is empty.
func (ts *testStore) firstEventRev() int64 {
	ts.t.Helper()
	iter, err := ts.db.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixEvents}, UpperBound: []byte{storage.PrefixEvents + 1}})
	if err != nil {
		ts.t.Fatal(err)
	}
	defer func() { _ = iter.Close() }()
	if !iter.First() {
		return 0
	}
	v, err := iter.ValueAndErr()
	if err != nil {
		ts.t.Fatal(err)
	}
	rev, _, _, _, err := decodeEvent(iter.Key(), v)
	if err != nil {
		ts.t.Fatal(err)
	}
	return rev
}
