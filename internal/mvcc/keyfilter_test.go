package mvcc

import (
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func TestKeyFilterNeverDeniesAnAddedKey(t *testing.T) {
	f := newKeyFilter(1000)
	if !f.mayContain([]byte("anything")) {
		t.Fatalf("a filter still being built denied a key")
	}
	f.ready.Store(true)
	for i := 0; i < 5000; i++ { // past its capacity too
		f.add([]byte(fmt.Sprintf("key-%d", i)))
	}
	for i := 0; i < 5000; i++ {
		if !f.mayContain([]byte(fmt.Sprintf("key-%d", i))) {
			t.Fatalf("added key %d denied", i)
		}
	}
	g := newKeyFilter(1000)
	g.ready.Store(true)
	for i := 0; i < 1000; i++ {
		g.add([]byte(fmt.Sprintf("key-%d", i)))
	}
	maybe := 0
	for i := 0; i < 10000; i++ {
		if g.mayContain([]byte(fmt.Sprintf("absent-%d", i))) {
			maybe++
		}
	}
	if maybe > 500 { // about 1% expected at capacity
		t.Fatalf("%d of 10000 absent keys answered maybe", maybe)
	}
}

// Keys written before the store opened are known to the filter only through
// its scan; a put of one of them must find its history, not start a new one.
func TestKeyFilterLearnsExistingKeysAtOpen(t *testing.T) {
	ts := newTestStore(t)
	for i := 0; i < 300; i++ {
		ts.put(fmt.Sprintf("k%03d", i), "v1")
	}
	ts.reopen() // waits until the filter is built
	if !ts.s.filter.ready.Load() {
		t.Fatal("filter not built")
	}
	for i := 0; i < 300; i++ {
		k := fmt.Sprintf("k%03d", i)
		if !ts.s.filter.mayContain([]byte(k)) {
			t.Fatalf("existing key %s denied after reopen", k)
		}
	}
	resp := ts.putReq(&pb.PutRequest{Key: []byte("k150"), Value: []byte("v2"), PrevKv: true})
	if resp.PrevKv == nil || resp.PrevKv.Version != 1 {
		t.Fatalf("prev kv %v", resp.PrevKv)
	}
	kv := ts.get("k150", 0)
	if kv.Version != 2 || kv.CreateRevision != 152 {
		t.Fatalf("k150 after reopen and put: version %d create %d, want 2 and 152", kv.Version, kv.CreateRevision)
	}
	ts.put("k151", "v2") // the path without prev_kv, which trusts the filter
	if kv := ts.get("k151", 0); kv.Version != 2 || kv.CreateRevision != 153 {
		t.Fatalf("k151 after reopen and put: version %d create %d, want 2 and 153", kv.Version, kv.CreateRevision)
	}
}
