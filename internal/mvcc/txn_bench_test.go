package mvcc

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Shape of the benchmarks below: 256-byte values, batches of a few hundred
// requests (what one Raft Ready carries under load).
const (
	benchPerBatch  = 500
	benchValueSize = 256
)

// benchKey is key number n as the etcd benchmark tool makes it: a varint.
func benchKey(n int) []byte {
	k := make([]byte, 8)
	binary.PutVarint(k, int64(n))
	return k
}

// populateBench writes keys [0, n) versions times each and returns the mod
// revision of each key's newest version.
func populateBench(b *testing.B, ts *testStore, n, versions int) []int64 {
	value := make([]byte, benchValueSize)
	modRev := make([]int64, n)
	for v := 0; v < versions; v++ {
		for lo := 0; lo < n; lo += benchPerBatch {
			batch := ts.s.NewBatch()
			for k := lo; k < min(lo+benchPerBatch, n); k++ {
				resp, err := batch.Put(&pb.PutRequest{Key: benchKey(k), Value: value}, noLeases)
				if err != nil {
					b.Fatal(err)
				}
				modRev[k] = resp.Header.Revision
			}
			if err := batch.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	}
	return modRev
}

// BenchmarkBatchGuardedUpdate measures Kubernetes' update on the apply path:
// a transaction that puts a key if its mod revision is still the one the
// writer read, and reads the key otherwise, over random keys of a space of
// 100,000 that the store holds in later versions.
func BenchmarkBatchGuardedUpdate(b *testing.B) {
	const keySpace = 100_000
	ts := newTestStore(b)
	modRev := populateBench(b, ts, keySpace, 2)
	value := make([]byte, benchValueSize)
	rnd := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		batch := ts.s.NewBatch()
		for j := 0; j < benchPerBatch && i < b.N; j, i = j+1, i+1 {
			k := rnd.IntN(keySpace)
			kb := benchKey(k)
			req := &pb.TxnRequest{
				Compare: []*pb.Compare{{Key: kb, Target: pb.Compare_MOD, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_ModRevision{ModRevision: modRev[k]}}},
				Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: kb, Value: value}}}},
				Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: kb}}}},
			}
			resp, err := batch.Txn(req, noLeases)
			if err != nil {
				b.Fatal(err)
			}
			if !resp.Succeeded {
				b.Fatalf("txn on key %d failed its compare", k)
			}
			modRev[k] = resp.Header.Revision
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBatchDeleteKey measures a delete of one key on the apply path
// (Kubernetes deletes one object at a time), each of b.N keys held in a
// later version, deleted in random order.
func BenchmarkBatchDeleteKey(b *testing.B) {
	ts := newTestStore(b)
	populateBench(b, ts, b.N, 2)
	order := rand.New(rand.NewPCG(1, 2)).Perm(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		batch := ts.s.NewBatch()
		for j := 0; j < benchPerBatch && i < b.N; j, i = j+1, i+1 {
			resp, err := batch.DeleteRange(&pb.DeleteRangeRequest{Key: benchKey(order[i])})
			if err != nil {
				b.Fatal(err)
			}
			if resp.Deleted != 1 {
				b.Fatalf("deleted %d keys, want 1", resp.Deleted)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}
