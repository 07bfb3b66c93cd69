package mvcc

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// BenchmarkBatchGuardedUpdate measures Kubernetes' update on the apply path:
// a transaction that puts a key if its mod revision is still the one the
// writer read, and reads the key otherwise, over random keys of a space of
// 100,000 that the store holds in later versions.
func BenchmarkBatchGuardedUpdate(b *testing.B) {
	const (
		perBatch = 500
		keySpace = 100_000
	)
	value := make([]byte, 256)
	key := func(n int) []byte {
		k := make([]byte, 8)
		binary.PutVarint(k, int64(n))
		return k
	}
	ts := newTestStore(b)
	modRev := make([]int64, keySpace)
	for v := 0; v < 2; v++ {
		for lo := 0; lo < keySpace; lo += perBatch {
			batch := ts.s.NewBatch()
			for k := lo; k < min(lo+perBatch, keySpace); k++ {
				resp, err := batch.Put(&pb.PutRequest{Key: key(k), Value: value}, noLeases)
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
	rnd := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		batch := ts.s.NewBatch()
		for j := 0; j < perBatch && i < b.N; j, i = j+1, i+1 {
			k := rnd.IntN(keySpace)
			kb := key(k)
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
	const perBatch = 500
	value := make([]byte, 256)
	key := func(n int) []byte {
		k := make([]byte, 8)
		binary.PutVarint(k, int64(n))
		return k
	}
	ts := newTestStore(b)
	for v := 0; v < 2; v++ {
		for lo := 0; lo < b.N; lo += perBatch {
			batch := ts.s.NewBatch()
			for k := lo; k < min(lo+perBatch, b.N); k++ {
				if _, err := batch.Put(&pb.PutRequest{Key: key(k), Value: value}, noLeases); err != nil {
					b.Fatal(err)
				}
			}
			if err := batch.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	}
	order := rand.New(rand.NewPCG(1, 2)).Perm(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		batch := ts.s.NewBatch()
		for j := 0; j < perBatch && i < b.N; j, i = j+1, i+1 {
			resp, err := batch.DeleteRange(&pb.DeleteRangeRequest{Key: key(order[i])})
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
