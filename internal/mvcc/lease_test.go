package mvcc

import (
	"fmt"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// leaseChange is one call of a batch's LeaseChanged.
type leaseChange struct {
	key      string
	old, new int64
}

func anyLease(int64) bool { return true }

// TestLeaseChanges checks that every write that changes a key's lease reports
// it, whether the key's previous version is cached, looked up, or written in
// the same batch, and that writes keeping the lease report nothing.
func TestLeaseChanges(t *testing.T) {
	ts := newTestStore(t)
	var got []leaseChange
	step := func(fn func(b *Batch) error) []leaseChange {
		t.Helper()
		got = nil
		b := ts.s.NewBatch()
		b.OnLeaseChange(func(key []byte, old, new int64) error {
			got = append(got, leaseChange{string(key), old, new})
			return nil
		})
		if err := fn(b); err != nil {
			b.Abort()
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		return got
	}
	put := func(key string, lease int64) func(b *Batch) error {
		return func(b *Batch) error {
			_, err := b.Put(&pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: lease}, anyLease)
			return err
		}
	}
	for i, c := range []struct {
		name string
		do   func(b *Batch) error
		want []leaseChange
	}{
		{"create with lease", put("a", 1), []leaseChange{{"a", 0, 1}}},
		{"overwrite first version, same lease", put("a", 1), nil},
		{"move to another lease", put("a", 2), []leaseChange{{"a", 1, 2}}},
		{"drop the lease", put("a", 0), []leaseChange{{"a", 2, 0}}},
		{"create without lease", put("b", 0), nil},
		{"attach later", put("b", 3), []leaseChange{{"b", 0, 3}}},
		{"ignore lease keeps it", func(b *Batch) error {
			_, err := b.Put(&pb.PutRequest{Key: []byte("b"), Value: []byte("w"), IgnoreLease: true}, anyLease)
			return err
		}, nil},
		{"two puts in one batch", func(b *Batch) error {
			if err := put("c", 4)(b); err != nil {
				return err
			}
			return put("c", 5)(b)
		}, []leaseChange{{"c", 0, 4}, {"c", 4, 5}}},
		{"delete detaches", func(b *Batch) error {
			_, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("z")})
			return err
		}, []leaseChange{{"b", 3, 0}, {"c", 5, 0}}},
		{"txn delete then put", func(b *Batch) error {
			if err := put("d", 6)(b); err != nil {
				return err
			}
			_, err := b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{
				{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("d"), RangeEnd: []byte{0}}}},
				{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("e"), Lease: 7}}},
			}}, anyLease)
			return err
		}, []leaseChange{{"d", 0, 6}, {"d", 6, 0}, {"e", 0, 7}}},
	} {
		if got := step(c.do); !slices.Equal(got, c.want) {
			t.Errorf("%d %s: lease changes %v, want %v", i, c.name, got, c.want)
		}
	}
}

// TestDeleteKeys checks that a revoked lease's keys go at one revision, that
// keys already gone are skipped, and that deleting none leaves the revision.
func TestDeleteKeys(t *testing.T) {
	ts := newTestStore(t)
	b := ts.s.NewBatch()
	for i := range 3 {
		if _, err := b.Put(&pb.PutRequest{Key: fmt.Appendf(nil, "k%d", i), Value: []byte("v"), Lease: 9}, anyLease); err != nil {
			t.Fatal(err)
		}
	}
	before := b.Rev()
	rev, err := b.DeleteKeys([][]byte{[]byte("k0"), []byte("gone"), []byte("k2")})
	if err != nil || rev != before+1 {
		t.Fatalf("DeleteKeys: revision %d, %v; want %d", rev, err, before+1)
	}
	if again, err := b.DeleteKeys([][]byte{[]byte("gone")}); err != nil || again != rev {
		t.Fatalf("DeleteKeys of nothing live: revision %d, %v; want %d", again, err, rev)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	resp, err := ts.s.Range(&pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != "k1" {
		t.Fatalf("after DeleteKeys: %v, want only k1", resp.Kvs)
	}
	old, err := ts.s.Range(&pb.RangeRequest{Key: []byte("k0"), Revision: before})
	if err != nil || len(old.Kvs) != 1 {
		t.Fatalf("k0 at revision 3: %v, %v", old, err)
	}
}
