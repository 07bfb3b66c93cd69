package snapshot_test

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/apply"
	"github.com/plinthdb/plinth/internal/entry"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/storage"
)

// member is a member's storage stack on a real Pebble database: its log, its
// MVCC store and its applier, driven as the raft loop drives them.
type member struct {
	t    *testing.T
	dir  string
	db   *pebble.DB
	log  *storage.LogStore
	kv   *mvcc.Store
	a    *apply.Applier
	term uint64
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openMember(t *testing.T) *member {
	t.Helper()
	m := &member{t: t, dir: t.TempDir(), term: 1}
	db, err := storage.Open(m.dir, discardLogger(), nil)
	if err != nil {
		t.Fatalf("open pebble: %v", err)
	}
	m.db = db
	if m.log, err = storage.OpenLogStore(db); err != nil {
		t.Fatalf("open log: %v", err)
	}
	if m.kv, err = mvcc.Open(db, discardLogger()); err != nil {
		t.Fatalf("open mvcc: %v", err)
	}
	if m.a, err = apply.New(db, m.kv, discardLogger()); err != nil {
		t.Fatalf("new applier: %v", err)
	}
	t.Cleanup(m.close)
	return m
}

func (m *member) close() {
	if m.db == nil {
		return
	}
	m.kv.Close()
	if err := m.db.Close(); err != nil {
		m.t.Errorf("close pebble: %v", err)
	}
	m.db = nil
}

// propose appends reqs to the log as entries of the member's current term
// (with a hard state that commits them), then applies them, as a leader's
// raft loop would. It returns the applied results.
func (m *member) propose(cs *raftpb.ConfState, reqs ...*pb.InternalRaftRequest) []apply.Result {
	m.t.Helper()
	last, _ := m.log.LastIndex()
	ents := make([]*raftpb.Entry, 0, len(reqs))
	for i, req := range reqs {
		req.ID = last + uint64(i) + 1
		data, _, err := entry.Encode(req)
		if err != nil {
			m.t.Fatal(err)
		}
		ents = append(ents, &raftpb.Entry{Index: proto.Uint64(last + uint64(i) + 1), Term: proto.Uint64(m.term), Data: data})
	}
	hs := &raftpb.HardState{Term: proto.Uint64(m.term), Vote: proto.Uint64(1), Commit: proto.Uint64(last + uint64(len(reqs)))}
	b := m.db.NewBatch()
	if err := m.log.Append(b, hs, ents); err != nil {
		m.t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		m.t.Fatal(err)
	}
	m.log.AfterAppend(hs, ents)
	res, err := m.a.Apply(ents, cs)
	if err != nil {
		m.t.Fatalf("apply: %v", err)
	}
	if cs != nil {
		m.log.AfterConfState(cs)
	}
	for _, r := range res {
		if r.Done != nil {
			select {
			case <-r.Done:
			case <-time.After(10 * time.Second):
				m.t.Fatal("physical compaction did not finish in 10s")
			}
		}
	}
	return res
}

func putReq(key, value string) *pb.InternalRaftRequest {
	return &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte(key), Value: []byte(value)}}
}

func delReq(key, end string) *pb.InternalRaftRequest {
	return &pb.InternalRaftRequest{DeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end)}}
}

func (m *member) put(key, value string) *pb.PutResponse {
	m.t.Helper()
	res := m.propose(nil, putReq(key, value))
	if res[0].Err != nil {
		m.t.Fatalf("put %q: %v", key, res[0].Err)
	}
	return res[0].Resp.(*pb.PutResponse)
}

func (m *member) get(key string) *mvccpb.KeyValue {
	m.t.Helper()
	resp, err := m.kv.Range(&pb.RangeRequest{Key: []byte(key)})
	if err != nil {
		m.t.Fatalf("get %q: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0]
}

func (m *member) setMeta(name, value string) {
	m.t.Helper()
	if err := m.db.Set(storage.MetaKey(name), []byte(value), pebble.Sync); err != nil {
		m.t.Fatal(err)
	}
}

func memberKey(id uint64) []byte {
	k := []byte{storage.PrefixMembers}
	return append(k, fmt.Sprintf("%08d", id)...)
}

// buildSender gives m a state with every kind of history: creates,
// overwrites, deletes, a transaction, a physical compaction, a configuration
// and membership records, and its identity.
func buildSender(m *member) {
	m.t.Helper()
	cs := &raftpb.ConfState{Voters: []uint64{1, 2, 3}}
	m.propose(cs, putReq("shared", "a1"), putReq("a-only", "a1"), putReq("gone", "x"))
	for i := 2; i <= 5; i++ {
		m.propose(nil, putReq("shared", fmt.Sprintf("a%d", i)), putReq(fmt.Sprintf("k%03d", i), "v"))
	}
	m.propose(nil, putReq("a-only", "a2"), delReq("gone", ""))
	m.propose(nil, &pb.InternalRaftRequest{Txn: &pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte("shared"), Target: pb.Compare_VERSION, Result: pb.Compare_EQUAL, TargetUnion: &pb.Compare_Version{Version: 5}}},
		Success: []*pb.RequestOp{
			{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("shared"), Value: []byte("a6")}}},
			{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("k002")}}},
		},
	}})
	m.propose(nil, &pb.InternalRaftRequest{Compaction: &pb.CompactionRequest{Revision: 4, Physical: true}})
	m.propose(nil, putReq("a-only", "a3"), putReq("k010", "late"))
	m.term = 3
	m.propose(nil, putReq("shared", "a7"))
	m.propose(nil, &pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: 100, TTL: 30}})
	m.propose(nil, &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte("leased-a"), Lease: 100}})
	for id := uint64(1); id <= 3; id++ {
		if err := m.db.Set(memberKey(id), []byte(fmt.Sprintf("member %d of A", id)), pebble.Sync); err != nil {
			m.t.Fatal(err)
		}
	}
	m.setMeta(storage.MetaClusterID, "cluster-A")
	m.setMeta(storage.MetaMemberID, "member-A")
}

// buildReceiver gives m a different state in every space: other keys and
// versions of the shared ones, a longer log of other terms, its own hard
// state and identity, more members, a later compaction.
func buildReceiver(m *member) {
	m.t.Helper()
	m.term = 7
	m.propose(&raftpb.ConfState{Voters: []uint64{4}}, putReq("b-only", "b1"))
	for i := 0; i < 60; i++ {
		m.propose(nil, putReq("shared", fmt.Sprintf("b%d", i)), putReq("b-only", fmt.Sprintf("b%d", i)), putReq(fmt.Sprintf("z%03d", i), "b"))
	}
	m.propose(nil, &pb.InternalRaftRequest{Compaction: &pb.CompactionRequest{Revision: 50, Physical: true}})
	m.propose(nil, &pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: 200, TTL: 30}})
	m.propose(nil, &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte("leased-b"), Lease: 200}})
	for id := uint64(2); id <= 6; id++ {
		if err := m.db.Set(memberKey(id), []byte(fmt.Sprintf("member %d of B", id)), pebble.Sync); err != nil {
			m.t.Fatal(err)
		}
	}
	m.setMeta(storage.MetaClusterID, "cluster-B")
	m.setMeta(storage.MetaMemberID, "member-B")
	m.setMeta(storage.MetaJoined, "joined-B")
}

// dump returns every key and value of r in [start, end).
func dump(t *testing.T, r pebble.Reader, sp storage.Span) [][2]string {
	t.Helper()
	iter, err := r.NewIter(&pebble.IterOptions{LowerBound: sp.Start, UpperBound: sp.End})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = iter.Close() }()
	var out [][2]string
	for valid := iter.First(); valid; valid = iter.Next() {
		out = append(out, [2]string{string(iter.Key()), string(iter.Value())})
	}
	if err := iter.Error(); err != nil {
		t.Fatal(err)
	}
	return out
}

// stateMachine dumps the state machine's spans and meta values of r.
func stateMachine(t *testing.T, r pebble.Reader) map[string][][2]string {
	t.Helper()
	out := map[string][][2]string{}
	for _, sp := range storage.StateMachineSpans {
		out[fmt.Sprintf("span %x", sp.Start)] = dump(t, r, sp)
	}
	for _, name := range storage.StateMachineMeta {
		v, found, err := storage.GetMeta(r, name)
		if err != nil {
			t.Fatal(err)
		}
		if found {
			out["meta "+name] = [][2]string{{name, string(v)}}
		}
	}
	return out
}

func memberState(t *testing.T, r pebble.Reader) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range storage.MemberMeta {
		v, found, err := storage.GetMeta(r, name)
		if err != nil {
			t.Fatal(err)
		}
		if !found {
			t.Fatalf("member meta %s missing", name)
		}
		out[name] = string(v)
	}
	return out
}

func equalDumps(t *testing.T, what string, got, want map[string][][2]string) {
	t.Helper()
	for k, w := range want {
		g := got[k]
		if len(g) != len(w) {
			t.Errorf("%s: %s has %d keys, want %d", what, k, len(g), len(w))
			continue
		}
		for i := range w {
			if g[i] != w[i] {
				t.Errorf("%s: %s key %d is %q=%q, want %q=%q", what, k, i, g[i][0], g[i][1], w[i][0], w[i][1])
				break
			}
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %s is present, want absent", what, k)
		}
	}
}
