package entry

import (
	"errors"
	"math"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func roundTrip(t *testing.T, req *pb.InternalRaftRequest) []byte {
	t.Helper()
	data, size, err := Encode(req)
	if err != nil {
		t.Fatalf("encode %v: %v", req, err)
	}
	if want := proto.Size(req); size != want {
		t.Errorf("encode %v: protobuf size %d, want %d", req, size, want)
	}
	var got pb.InternalRaftRequest
	if err := Decode(data, &got); err != nil {
		t.Fatalf("decode %v: %v", req, err)
	}
	if !proto.Equal(&got, req) {
		t.Errorf("round trip:\ngot  %v\nwant %v", &got, req)
	}
	return data
}

func TestPutsTakeTheirOwnEncoding(t *testing.T) {
	for _, p := range []*pb.PutRequest{
		{Key: []byte("k"), Value: []byte("v")},
		{Key: []byte("k")},
		{Key: []byte("k"), Value: make([]byte, 300), Lease: 7, PrevKv: true},
		{Key: []byte("k"), IgnoreValue: true, IgnoreLease: true},
		{Key: []byte("k"), Lease: -1},
		{Key: []byte("k"), Lease: math.MaxInt64, PrevKv: true, IgnoreValue: true, IgnoreLease: true},
		{}, // validation refuses it, but the encoding must not care
	} {
		for _, id := range []uint64{0, 1, 1 << 63} {
			data := roundTrip(t, &pb.InternalRaftRequest{ID: id, Put: p})
			if data[0] != putMarker {
				t.Errorf("put %v took the protobuf encoding", p)
			}
		}
	}
}

func TestOtherRequestsTakeProtobuf(t *testing.T) {
	put := &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}
	for _, req := range []*pb.InternalRaftRequest{
		{ID: 3, Range: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b")}},
		{ID: 4, DeleteRange: &pb.DeleteRangeRequest{Key: []byte("a"), PrevKv: true}},
		{ID: 5, Txn: &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: put}}}}},
		{ID: 6, Compaction: &pb.CompactionRequest{Revision: 9, Physical: true}},
		{ID: 10, LeaseGrant: &pb.LeaseGrantRequest{ID: -5, TTL: 60}},
		{ID: 11, LeaseRevoke: &pb.LeaseRevokeRequest{ID: 1 << 62}},
		{ID: 12, LeaseCheckpoint: &pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: 1, Remaining_TTL: 59_999}, {ID: 2}}}},
		// A put beside anything else: the put encoding would lose it.
		{ID: 7, Put: put, Header: &pb.RequestHeader{Username: "u"}},
		{ID: 8, Put: put, Header: &pb.RequestHeader{}},
		{ID: 9, Put: put, Range: &pb.RangeRequest{}},
	} {
		if data := roundTrip(t, req); data[0] == putMarker {
			t.Errorf("%v took the put encoding", req)
		}
	}
}

func TestPutCarryingUnknownFieldsTakesProtobuf(t *testing.T) {
	p := &pb.PutRequest{Key: []byte("k")}
	p.ProtoReflect().SetUnknown([]byte{0xf8, 0x01, 0x01}) // field 31, varint 1
	if data := roundTrip(t, &pb.InternalRaftRequest{ID: 1, Put: p}); data[0] == putMarker {
		t.Errorf("a put with unknown fields took the put encoding")
	}
}

func TestDecodeRefusesDamagedPuts(t *testing.T) {
	good, _, err := Encode(&pb.InternalRaftRequest{ID: 300, Put: &pb.PutRequest{Key: []byte("key"), Value: []byte("value"), Lease: 5}})
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n < len(good); n++ {
		var req pb.InternalRaftRequest
		if err := Decode(good[:n], &req); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decode of the first %d of %d bytes: %v, want ErrCorrupt", n, len(good), err)
		}
	}
	for _, data := range [][]byte{
		append(append([]byte(nil), good...), 0),                  // trailing byte
		append(append([]byte(nil), good[:len(good)-1]...), 0x80), // unknown flag
		{putMarker, 1, 0xff, 0xff, 0xff, 0xff, 0x0f},             // key longer than the data
		{0xff, 0xff}, // not protobuf either
	} {
		var req pb.InternalRaftRequest
		if err := Decode(data, &req); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decode %x: %v, want ErrCorrupt", data, err)
		}
	}
}

func FuzzPut(f *testing.F) {
	f.Add(uint64(1), []byte("k"), []byte("v"), int64(0), byte(0))
	f.Add(uint64(1<<63), []byte{}, make([]byte, 200), int64(-5), byte(7))
	f.Fuzz(func(t *testing.T, id uint64, key, value []byte, lease int64, flags byte) {
		p := &pb.PutRequest{Key: key, Value: value, Lease: lease,
			PrevKv: flags&1 != 0, IgnoreValue: flags&2 != 0, IgnoreLease: flags&4 != 0}
		if len(key) == 0 {
			p.Key = nil
		}
		if len(value) == 0 {
			p.Value = nil
		}
		roundTrip(t, &pb.InternalRaftRequest{ID: id, Put: p})
	})
}

// FuzzDecode feeds Decode arbitrary data: it must answer without panicking,
// and what it accepts must encode to something that decodes the same.
func FuzzDecode(f *testing.F) {
	for _, req := range []*pb.InternalRaftRequest{
		{ID: 1, Put: &pb.PutRequest{Key: []byte("k"), Value: []byte("v"), PrevKv: true}},
		{ID: 2, Txn: &pb.TxnRequest{}},
	} {
		data, _, err := Encode(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req pb.InternalRaftRequest
		if err := Decode(data, &req); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error %v is not ErrCorrupt", err)
			}
			return
		}
		again, _, err := Encode(&req)
		if err != nil {
			t.Fatalf("re-encode %v: %v", &req, err)
		}
		var back pb.InternalRaftRequest
		if err := Decode(again, &back); err != nil || !proto.Equal(&back, &req) {
			t.Fatalf("re-decode: %v, %v; want %v", &back, err, &req)
		}
	})
}

func BenchmarkPut(b *testing.B) {
	req := &pb.InternalRaftRequest{ID: 12345678, Put: &pb.PutRequest{Key: []byte("benchkey"), Value: make([]byte, 256)}}
	b.Run("entry", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			data, _, _ := Encode(req)
			var got pb.InternalRaftRequest
			if err := Decode(data, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			data, _ := proto.Marshal(req)
			var got pb.InternalRaftRequest
			if err := proto.Unmarshal(data, &got); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestDecodeConfChange(t *testing.T) {
	typ := raftpb.ConfChangeType_ConfChangeAddLearnerNode
	v1, err := proto.Marshal(&raftpb.ConfChange{Id: proto.Uint64(7), Type: &typ, NodeId: proto.Uint64(3), Context: []byte("ctx")})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := proto.Marshal(&raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: &typ, NodeId: proto.Uint64(4)}}})
	if err != nil {
		t.Fatal(err)
	}
	cc, id, err := DecodeConfChange(&raftpb.Entry{Type: raftpb.EntryType_EntryConfChange.Enum(), Data: v1})
	if err != nil || id != 7 || cc.AsV2().GetChanges()[0].GetNodeId() != 3 || string(cc.AsV2().GetContext()) != "ctx" {
		t.Fatalf("v1: %v, id %d, %v", cc, id, err)
	}
	cc, id, err = DecodeConfChange(&raftpb.Entry{Type: raftpb.EntryType_EntryConfChangeV2.Enum(), Data: v2})
	if err != nil || id != 0 || cc.AsV2().GetChanges()[0].GetNodeId() != 4 {
		t.Fatalf("v2: %v, id %d, %v", cc, id, err)
	}
	if _, _, err := DecodeConfChange(&raftpb.Entry{Type: raftpb.EntryType_EntryConfChange.Enum(), Data: []byte{0xff}}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt conf change: %v, want ErrCorrupt", err)
	}
	if _, _, err := DecodeConfChange(&raftpb.Entry{Type: raftpb.EntryType_EntryNormal.Enum()}); !errors.Is(err, ErrNotConfChange) {
		t.Fatalf("normal entry: %v, want ErrNotConfChange", err)
	}
}
