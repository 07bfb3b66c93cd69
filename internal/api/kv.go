// Package api serves the etcd v3 gRPC API: it validates each request, hands
// it to the backend (Raft for writes and linearizable reads, the local MVCC
// store for serializable ones), maps errors to etcd's rpctypes, and fills the
// response header. It holds no state of its own and must never change state
// except through the backend's Propose.
package api

import (
	"context"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/mvcc"
)

// MaxTxnOps is the largest number of operations in one list of a transaction,
// etcd's default.
const MaxTxnOps = 128

// Backend is what the API needs from the server.
type Backend interface {
	// Propose replicates req through Raft and returns its applied answer.
	// It must not keep req, which the caller reuses once it returns.
	Propose(ctx context.Context, req *pb.InternalRaftRequest) (proto.Message, error)
	// ReadIndex returns once a read of the local store is linearizable.
	ReadIndex(ctx context.Context) error
	// KV is the local MVCC store.
	KV() *mvcc.Store
	// FillHeader sets the member's identity and Raft term in h, and the
	// current revision when h has none.
	FillHeader(h *pb.ResponseHeader)
}

// QuotaChecker is a backend with a storage quota.
type QuotaChecker interface {
	// CheckQuota answers ErrNoSpace for a write of cost bytes that would
	// take the database past its quota.
	CheckQuota(cost int) error
}

// KV serves the etcd KV service.
type KV struct {
	pb.UnimplementedKVServer
	b     Backend
	quota QuotaChecker // nil: no quota
}

// NewKV returns the KV service over b, which may be a QuotaChecker.
func NewKV(b Backend) *KV {
	kv := &KV{b: b}
	kv.quota, _ = b.(QuotaChecker)
	return kv
}

// checkQuota refuses a write that would take the database past its quota.
func (s *KV) checkQuota(cost int) error {
	if s.quota == nil {
		return nil
	}
	return toGRPC(s.quota.CheckQuota(cost))
}

// Range implements KV.Range.
func (s *KV) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRange(req); err != nil {
		return nil, err
	}
	if !req.Serializable {
		if err := s.b.ReadIndex(ctx); err != nil {
			return nil, toGRPC(err)
		}
	}
	resp, err := s.b.KV().Range(req)
	if err != nil {
		return nil, toGRPC(err)
	}
	s.b.FillHeader(resp.Header)
	return resp, nil
}

// Put implements KV.Put.
func (s *KV) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkPut(req); err != nil {
		return nil, err
	}
	if err := s.checkQuota(len(req.Key) + len(req.Value)); err != nil {
		return nil, err
	}
	return propose[*pb.PutResponse](ctx, s.b, func(r *pb.InternalRaftRequest) { r.Put = req })
}

// DeleteRange implements KV.DeleteRange.
func (s *KV) DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := checkDelete(req); err != nil {
		return nil, err
	}
	return propose[*pb.DeleteRangeResponse](ctx, s.b, func(r *pb.InternalRaftRequest) { r.DeleteRange = req })
}

// Txn implements KV.Txn.
func (s *KV) Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := checkTxn(req, MaxTxnOps); err != nil {
		return nil, err
	}
	if err := checkDuplicates(req.Success); err != nil {
		return nil, err
	}
	if err := checkDuplicates(req.Failure); err != nil {
		return nil, err
	}
	if mvcc.IsReadOnly(req) {
		// A transaction that only reads needs no log entry, as in etcd:
		// a read index makes it linearizable unless every range in it
		// asked to be serializable.
		if !txnSerializable(req) {
			if err := s.b.ReadIndex(ctx); err != nil {
				return nil, toGRPC(err)
			}
		}
		resp, err := s.b.KV().ReadTxn(req)
		if err != nil {
			return nil, toGRPC(err)
		}
		s.b.FillHeader(resp.Header)
		return resp, nil
	}
	if err := s.checkQuota(proto.Size(req)); err != nil {
		return nil, err
	}
	return propose[*pb.TxnResponse](ctx, s.b, func(r *pb.InternalRaftRequest) { r.Txn = req })
}

// Compact implements KV.Compact.
func (s *KV) Compact(ctx context.Context, req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return propose[*pb.CompactionResponse](ctx, s.b, func(r *pb.InternalRaftRequest) { r.Compaction = req })
}

// txnSerializable reports whether every range in a read-only transaction,
// nested ones included, asked for a serializable read.
func txnSerializable(req *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			switch r := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if !r.RequestRange.GetSerializable() {
					return false
				}
			case *pb.RequestOp_RequestTxn:
				if !txnSerializable(r.RequestTxn) {
					return false
				}
			}
		}
	}
	return true
}

// RangeStream implements KV.RangeStream: Range's answer in chunks read at one
// revision, with header, more and count on the last chunk.
func (s *KV) RangeStream(req *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	if err := checkRange(req); err != nil {
		return err
	}
	if !req.Serializable {
		if err := s.b.ReadIndex(stream.Context()); err != nil {
			return toGRPC(err)
		}
	}
	err := s.b.KV().RangeStream(req, func(chunk *pb.RangeResponse) error {
		if chunk.Header != nil {
			s.b.FillHeader(chunk.Header)
		}
		return stream.Send(&pb.RangeStreamResponse{RangeResponse: chunk})
	})
	return toGRPC(err)
}

// raftRequests recycles the envelopes requests are proposed in: an
// InternalRaftRequest is a few hundred bytes, and every write needs one only
// until Propose has encoded it.
var raftRequests = sync.Pool{New: func() any { return new(pb.InternalRaftRequest) }}

// propose replicates the request that fill puts in an envelope and returns
// its answer, of type R, with the header filled.
func propose[R interface{ GetHeader() *pb.ResponseHeader }](ctx context.Context, b Backend, fill func(*pb.InternalRaftRequest)) (R, error) {
	req := raftRequests.Get().(*pb.InternalRaftRequest)
	fill(req)
	resp, err := b.Propose(ctx, req)
	req.Reset()
	raftRequests.Put(req)
	if err != nil {
		var none R
		return none, toGRPC(err)
	}
	r := resp.(R)
	b.FillHeader(r.GetHeader())
	return r, nil
}
