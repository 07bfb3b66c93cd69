package apply

import (
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	raftpb "go.etcd.io/raft/v3/raftpb"

	"github.com/plinthdb/plinth/internal/lease"
	"github.com/plinthdb/plinth/internal/mvcc"
)

// TestLeaseRequests applies grants, puts with leases, a lease moved by a
// transaction, a delete and a revoke, across a restart, and checks the
// answers and the lease -> keys index.
func TestLeaseRequests(t *testing.T) {
	dir := t.TempDir()
	m := openMember(t, dir)
	index := uint64(0)
	apply := func(req *pb.InternalRaftRequest) Result {
		t.Helper()
		index++
		req.ID = index
		results, err := m.a.Apply([]*raftpb.Entry{raftEntry(t, index, req)}, nil)
		if err != nil || len(results) != 1 {
			t.Fatalf("apply %v: %v, %v", req, results, err)
		}
		return results[0]
	}
	putReq := func(key string, id int64) *pb.InternalRaftRequest {
		return &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte(key), Value: []byte("v"), Lease: id}}
	}
	keysOf := func(id int64) []string {
		t.Helper()
		keys, err := m.a.Leases().Keys(id)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range keys {
			out = append(out, string(k))
		}
		return out
	}
	if r := apply(putReq("a", 7)); !errors.Is(r.Err, mvcc.ErrLeaseNotFound) {
		t.Fatalf("put with an unknown lease: %v", r.Err)
	}
	for _, id := range []int64{7, 8} {
		r := apply(&pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: id, TTL: 30}})
		if resp, ok := r.Resp.(*pb.LeaseGrantResponse); !ok || resp.ID != id || resp.TTL != 30 {
			t.Fatalf("grant %d: %v, %v", id, r.Resp, r.Err)
		}
	}
	if r := apply(&pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: 7, TTL: 30}}); !errors.Is(r.Err, lease.ErrExists) {
		t.Fatalf("second grant of 7: %v", r.Err)
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		if r := apply(putReq(k, 7)); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	apply(&pb.InternalRaftRequest{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("b"), Lease: 8}}},
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("c")}}},
	}}})
	apply(&pb.InternalRaftRequest{DeleteRange: &pb.DeleteRangeRequest{Key: []byte("d")}})
	m.close()
	m = openMember(t, dir)
	if got := keysOf(7); len(got) != 1 || got[0] != "a" {
		t.Fatalf("keys of 7 after moves, a delete and a restart: %q, want [a]", got)
	}
	if got := keysOf(8); len(got) != 1 || got[0] != "b" {
		t.Fatalf("keys of 8: %q, want [b]", got)
	}
	if r := apply(putReq("e", 8)); r.Err != nil {
		t.Fatal(r.Err)
	}
	before := m.kv.Rev()
	r := apply(&pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 8}})
	if resp, ok := r.Resp.(*pb.LeaseRevokeResponse); !ok || resp.Header.Revision != before+1 {
		t.Fatalf("revoke: %v, %v; want revision %d", r.Resp, r.Err, before+1)
	}
	rr, err := m.kv.Range(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z")})
	if err != nil {
		t.Fatal(err)
	}
	var live []string
	for _, kv := range rr.Kvs {
		live = append(live, string(kv.Key))
	}
	if len(live) != 2 || live[0] != "a" || live[1] != "c" {
		t.Fatalf("keys after the revoke of 8: %q, want [a c]", live)
	}
	if r := apply(&pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 8}}); !errors.Is(r.Err, lease.ErrNotFound) {
		t.Fatalf("second revoke: %v", r.Err)
	}
	if got := keysOf(8); len(got) != 0 {
		t.Fatalf("index of a revoked lease: %q", got)
	}
	// A revoke of a lease without keys makes no revision.
	apply(&pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: 9, TTL: 30}})
	before = m.kv.Rev()
	r = apply(&pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 9}})
	if resp, ok := r.Resp.(*pb.LeaseRevokeResponse); !ok || resp.Header.Revision != before {
		t.Fatalf("revoke without keys: %v, %v; want revision %d", r.Resp, r.Err, before)
	}
	r = apply(&pb.InternalRaftRequest{LeaseCheckpoint: &pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: 7, Remaining_TTL: 5000}, {ID: 9, Remaining_TTL: 1}}}})
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := m.a.Leases().IDs(); len(got) != 1 || got[0] != 7 {
		t.Fatalf("leases: %v, want [7]", got)
	}
}
