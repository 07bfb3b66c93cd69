package mvcc

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// BenchmarkBatchPut measures the apply path's cost of one put, as the etcd
// benchmark tool's put load drives it: 8-byte keys, 256-byte values, in
// batches of a few hundred puts (what one Raft Ready carries under load),
// each batch committed. "create" writes keys never seen; "overwrite" writes
// keys from a space of 100,000 that the store already holds.
func BenchmarkBatchPut(b *testing.B) {
	const perBatch, keySpace = 500, 100_000
	value := make([]byte, 256)
	run := func(b *testing.B, ts *testStore, key func(i int) []byte) {
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; {
			batch := ts.s.NewBatch()
			for j := 0; j < perBatch && i < b.N; j, i = j+1, i+1 {
				if _, err := batch.Put(&pb.PutRequest{Key: key(i), Value: value}, noLeases); err != nil {
					b.Fatal(err)
				}
			}
			if err := batch.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	}
	// Keys as the tool makes them: a varint of the key's number.
	varintKey := func(n int) []byte {
		k := make([]byte, 8)
		binary.PutVarint(k, int64(n))
		return k
	}
	b.Run("create", func(b *testing.B) {
		run(b, newTestStore(b), varintKey)
	})
	b.Run("overwrite", func(b *testing.B) {
		ts := newTestStore(b)
		batch := ts.s.NewBatch()
		for n := 0; n < keySpace; n++ {
			if _, err := batch.Put(&pb.PutRequest{Key: varintKey(n), Value: value}, noLeases); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
		rnd := rand.New(rand.NewPCG(1, 2))
		run(b, ts, func(int) []byte { return varintKey(rnd.IntN(keySpace)) })
	})
}
