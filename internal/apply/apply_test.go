package apply

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/entry"
	"github.com/plinthdb/plinth/internal/membership"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/storage"
)

type member struct {
	t   *testing.T
	dir string
	db  *pebble.DB
	kv  *mvcc.Store
	a   *Applier
}

func openMember(t *testing.T, dir string) *member {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := storage.Open(dir, logger, nil)
	if err != nil {
		t.Fatalf("open pebble: %v", err)
	}
	kv, err := mvcc.Open(db, logger)
	if err != nil {
		t.Fatalf("open mvcc: %v", err)
	}
	a, err := New(db, kv, logger)
	if err != nil {
		t.Fatalf("new applier: %v", err)
	}
	m := &member{t: t, dir: dir, db: db, kv: kv, a: a}
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

func raftEntry(t *testing.T, index uint64, req *pb.InternalRaftRequest) *raftpb.Entry {
	t.Helper()
	data, _, err := entry.Encode(req)
	if err != nil {
		t.Fatal(err)
	}
	return &raftpb.Entry{Index: &index, Term: proto.Uint64(1), Data: data}
}

func put(t *testing.T, index, id uint64, key, value string) *raftpb.Entry {
	return raftEntry(t, index, &pb.InternalRaftRequest{ID: id, Put: &pb.PutRequest{Key: []byte(key), Value: []byte(value)}})
}

func TestApplyReturnsResultsAndPersistsAppliedIndex(t *testing.T) {
	dir := t.TempDir()
	m := openMember(t, dir)
	empty := &raftpb.Entry{Index: proto.Uint64(1), Term: proto.Uint64(1)} // a new leader's empty entry
	results, err := m.a.Apply([]*raftpb.Entry{empty, put(t, 2, 10, "a", "1"), put(t, 3, 11, "b", "2")}, nil)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if len(results) != 2 || results[0].ID != 10 || results[1].ID != 11 {
		t.Fatalf("results %+v, want one per request, in order", results)
	}
	if rev := results[1].Resp.(*pb.PutResponse).Header.Revision; rev != 3 {
		t.Fatalf("second put at revision %d, want 3", rev)
	}
	m.close()

	m = openMember(t, dir)
	if got := m.a.AppliedIndex(); got != 3 {
		t.Fatalf("applied index after reopen: %d, want 3", got)
	}
	// Replaying entries the state already holds changes nothing: this is
	// what a restart does with the log's tail.
	results, err = m.a.Apply([]*raftpb.Entry{put(t, 2, 10, "a", "1"), put(t, 3, 11, "b", "2"), put(t, 4, 12, "c", "3")}, nil)
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if len(results) != 1 || results[0].ID != 12 {
		t.Fatalf("replay results %+v, want only entry 4's", results)
	}
	if rev := m.kv.Rev(); rev != 4 {
		t.Fatalf("revision after replay: %d, want 4 (nothing applied twice)", rev)
	}
}

func TestApplyRequestErrorsAreAnswersNotFailures(t *testing.T) {
	m := openMember(t, t.TempDir())
	ents := []*raftpb.Entry{
		raftEntry(t, 1, &pb.InternalRaftRequest{ID: 1, Compaction: &pb.CompactionRequest{Revision: 100}}),
		raftEntry(t, 2, &pb.InternalRaftRequest{ID: 2, DeleteRange: &pb.DeleteRangeRequest{Key: []byte("absent")}}),
		put(t, 3, 3, "k", "v"),
	}
	results, err := m.a.Apply(ents, nil)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if !errors.Is(results[0].Err, mvcc.ErrFutureRev) || results[1].Err != nil || results[2].Err != nil {
		t.Fatalf("results: %v, %v, %v", results[0].Err, results[1].Err, results[2].Err)
	}
	if m.a.AppliedIndex() != 3 || m.kv.Rev() != 2 {
		t.Fatalf("applied %d revision %d, want 3 and 2", m.a.AppliedIndex(), m.kv.Rev())
	}
}

// A delete refused for its size is an answer like any other request error:
// the entry is applied (as nothing) and the member goes on.
func TestDeleteTooLargeIsARequestError(t *testing.T) {
	if !isRequestError(fmt.Errorf("delete range: %w", mvcc.ErrDeleteTooLarge)) {
		t.Fatal("mvcc.ErrDeleteTooLarge stops the member instead of answering the request")
	}
}

// An entry this member cannot read (a request kind from a newer version, or
// one it does not apply) stops it: skipping the entry would let its state
// diverge from the other members'.
func TestApplyStopsAtAnUnknownRequest(t *testing.T) {
	m := openMember(t, t.TempDir())
	// Field 9999 is unknown to every version: it decodes as no request.
	unknown := protowire.AppendTag(nil, 9999, protowire.BytesType)
	unknown = protowire.AppendBytes(unknown, []byte("from the future"))
	ents := []*raftpb.Entry{
		put(t, 1, 1, "k", "v"),
		{Index: proto.Uint64(2), Term: proto.Uint64(1), Data: unknown},
		put(t, 3, 3, "k", "w"),
	}
	_, err := m.a.Apply(ents, nil)
	if !errors.Is(err, ErrUnknownRequest) {
		t.Fatalf("apply of an unknown request: %v, want ErrUnknownRequest", err)
	}
	if m.a.AppliedIndex() != 0 || m.kv.Rev() != 1 {
		t.Fatalf("a refused batch changed the state: applied %d revision %d", m.a.AppliedIndex(), m.kv.Rev())
	}
	// A request kind plinth knows but does not apply stops it as well.
	_, err = m.a.Apply([]*raftpb.Entry{raftEntry(t, 1, &pb.InternalRaftRequest{ID: 2, AuthEnable: &pb.AuthEnableRequest{}})}, nil)
	if !errors.Is(err, ErrUnknownRequest) {
		t.Fatalf("apply of an auth enable: %v, want ErrUnknownRequest", err)
	}
}

func TestApplyRefusesAGap(t *testing.T) {
	m := openMember(t, t.TempDir())
	if _, err := m.a.Apply([]*raftpb.Entry{put(t, 2, 1, "k", "v")}, nil); err == nil {
		t.Fatalf("applying entry 2 on an empty state: no error")
	}
	if m.kv.Rev() != 1 || m.a.AppliedIndex() != 0 {
		t.Fatalf("a refused batch changed the state: revision %d applied %d", m.kv.Rev(), m.a.AppliedIndex())
	}
}

func TestApplyPersistsConfState(t *testing.T) {
	dir := t.TempDir()
	m := openMember(t, dir)
	cs := &raftpb.ConfState{Voters: []uint64{7}}
	member := membership.Member{ID: 7, Name: "seven", PeerURLs: []string{"http://127.0.0.1:2380"}}
	cc, err := proto.Marshal(&raftpb.ConfChange{Type: raftpb.ConfChangeType_ConfChangeAddNode.Enum(), NodeId: proto.Uint64(7), Context: membership.Encode(member)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.a.Apply([]*raftpb.Entry{{Index: proto.Uint64(1), Term: proto.Uint64(1), Type: raftpb.EntryType_EntryConfChange.Enum(), Data: cc}}, cs); err != nil {
		t.Fatalf("apply: %v", err)
	}
	m.close()
	m = openMember(t, dir)
	log, err := storage.OpenLogStore(m.db)
	if err != nil {
		t.Fatal(err)
	}
	if got := log.ConfState(); !proto.Equal(got, cs) {
		t.Fatalf("conf state after reopen: %v, want %v", got, cs)
	}
	members, _, err := membership.List(m.db)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 1 || members[0].Name != "seven" || members[0].PeerURLs[0] != member.PeerURLs[0] || members[0].IsLearner {
		t.Fatalf("members after the conf change: %+v, want %+v", members, member)
	}
}
