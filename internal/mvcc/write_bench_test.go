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
// random keys from a space of 100,000 that the store already holds in later
// versions; "first overwrite" supersedes keys' first versions, which it
// copies into history; "random" is the tool's default load, random keys of a
// space of 100,000 (run it with -benchtime=60000x to match the tool's).
func BenchmarkBatchPut(b *testing.B) {
	const perBatch = 500
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
	// populate writes keys [0, n) versions times each.
	populate := func(b *testing.B, n, versions int) *testStore {
		ts := newTestStore(b)
		for v := 0; v < versions; v++ {
			for lo := 0; lo < n; lo += perBatch {
				batch := ts.s.NewBatch()
				for k := lo; k < min(lo+perBatch, n); k++ {
					if _, err := batch.Put(&pb.PutRequest{Key: varintKey(k), Value: value}, noLeases); err != nil {
						b.Fatal(err)
					}
				}
				if err := batch.Commit(); err != nil {
					b.Fatal(err)
				}
			}
		}
		return ts
	}
	b.Run("create", func(b *testing.B) {
		run(b, newTestStore(b), varintKey)
	})
	b.Run("overwrite", func(b *testing.B) {
		const keySpace = 100_000
		ts := populate(b, keySpace, 2)
		rnd := rand.New(rand.NewPCG(1, 2))
		run(b, ts, func(int) []byte { return varintKey(rnd.IntN(keySpace)) })
	})
	b.Run("random", func(b *testing.B) {
		// The tool's default put load: random keys over 100,000, into an
		// empty store (60,000 puts leave ~25% of them overwrites).
		rnd := rand.New(rand.NewPCG(1, 2))
		run(b, newTestStore(b), func(int) []byte { return varintKey(rnd.IntN(100_000)) })
	})
	b.Run("random first overwrite", func(b *testing.B) {
		// Keys' first versions superseded in random order, after they
		// left the memtable: a lookup each in the tables.
		ts := populate(b, b.N, 1)
		if err := ts.s.db.Flush(); err != nil {
			b.Fatal(err)
		}
		order := rand.New(rand.NewPCG(1, 2)).Perm(b.N)
		run(b, ts, func(i int) []byte { return varintKey(order[i]) })
	})
	b.Run("first overwrite", func(b *testing.B) {
		ts := populate(b, b.N, 1)
		run(b, ts, varintKey)
	})
}
