// Package floor is a gRPC server of the etcd KV API (and of lease grants and
// keep-alives) that does no work: Range, Put, Txn, LeaseGrant and LeaseKeepAlive
// answer at once from memory. Benchmarks run the etcd benchmark tool against it to
// measure what gRPC and the benchmark client cost on their own, the floor beneath any
// real server; a server's CPU per request is read as a ratio to the floor's.
//
// It must never store, order or persist anything: every answer is a constant or a
// counter, so whatever it costs is the RPC machinery's cost.
package floor

import (
	"context"
	"errors"
	"io"
	"math"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Fixed identity reported in every response header.
const (
	ClusterID = 0x1c1a5e
	MemberID  = 0xf1002
	RaftTerm  = 2
)

// KV answers the etcd KV service from constants. Put (and a Txn with puts) bumps a
// revision counter and returns it; Range returns one fixed key-value (the key asked for, a fixed value) at
// the current revision, or nothing when the floor was built with an empty value.
type KV struct {
	pb.UnimplementedKVServer

	rev   atomic.Int64
	value []byte
}

// NewKV returns a KV whose Range answers carry a value of valueSize bytes (none when
// valueSize is 0), so that a range answer is as large as a real server's for a key
// that was put with that value size.
func NewKV(valueSize int) *KV {
	kv := &KV{value: make([]byte, valueSize)}
	for i := range kv.value {
		kv.value[i] = 'v'
	}
	kv.rev.Store(1) // etcd starts at revision 1
	return kv
}

func (kv *KV) header(rev int64) *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: ClusterID, MemberId: MemberID, Revision: rev, RaftTerm: RaftTerm}
}

// Range returns the requested key with the fixed value, or no key for an empty value.
func (kv *KV) Range(_ context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	rev := kv.rev.Load()
	resp := &pb.RangeResponse{Header: kv.header(rev)}
	if len(kv.value) == 0 {
		return resp, nil
	}
	resp.Count = 1
	if r.CountOnly {
		return resp, nil
	}
	item := &mvccpb.KeyValue{Key: r.Key, CreateRevision: 2, ModRevision: 2, Version: 1}
	if !r.KeysOnly {
		item.Value = kv.value
	}
	resp.Kvs = []*mvccpb.KeyValue{item}
	return resp, nil
}

// Put returns a header with the next revision and stores nothing.
func (kv *KV) Put(_ context.Context, _ *pb.PutRequest) (*pb.PutResponse, error) {
	return &pb.PutResponse{Header: kv.header(kv.rev.Add(1))}, nil
}

// Txn answers every request as if its comparisons held: one response per op of the
// success branch, a put's with no previous value, a range's as Range answers. A
// txn with puts takes one new revision, as in etcd. It stores nothing; ops other
// than put and range answer Unimplemented.
func (kv *KV) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	rev := kv.rev.Load()
	for _, op := range r.Success {
		if _, ok := op.Request.(*pb.RequestOp_RequestPut); ok {
			rev = kv.rev.Add(1)
			break
		}
	}
	resp := &pb.TxnResponse{Header: kv.header(rev), Succeeded: true, Responses: make([]*pb.ResponseOp, 0, len(r.Success))}
	for _, op := range r.Success {
		switch req := op.Request.(type) {
		case *pb.RequestOp_RequestPut:
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{
				ResponsePut: &pb.PutResponse{Header: kv.header(rev)}}})
		case *pb.RequestOp_RequestRange:
			rr, _ := kv.Range(ctx, req.RequestRange)
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}})
		default:
			return nil, status.Errorf(codes.Unimplemented, "floor: txn op %T not served", req)
		}
	}
	return resp, nil
}

// KeepAliveTTL is the TTL every keep-alive answer of the floor reports.
const KeepAliveTTL = 60

// Lease answers lease grants with a new ID and the TTL asked for, and every
// keep-alive with KeepAliveTTL. It remembers no lease: other lease calls answer
// Unimplemented.
type Lease struct {
	pb.UnimplementedLeaseServer

	nextID atomic.Int64
	kv     *KV // for response headers
}

// LeaseGrant returns a new lease ID (or the one asked for) and the TTL asked for.
func (l *Lease) LeaseGrant(_ context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	id := r.ID
	if id == 0 {
		id = l.nextID.Add(1)
	}
	return &pb.LeaseGrantResponse{Header: l.kv.header(l.kv.rev.Load()), ID: id, TTL: r.TTL}, nil
}

// LeaseKeepAlive answers each keep-alive on the stream with KeepAliveTTL, until
// the client closes the stream.
func (l *Lease) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &pb.LeaseKeepAliveResponse{Header: l.kv.header(l.kv.rev.Load()), ID: req.ID, TTL: KeepAliveTTL}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// NewServer returns a gRPC server with the KV and Lease services registered, configured as etcd
// configures its own: no limit on concurrent streams per connection and etcd's
// default request size limit (1.5 MiB) plus gRPC overhead.
func NewServer(kv *KV) *grpc.Server {
	s := grpc.NewServer(
		grpc.MaxConcurrentStreams(math.MaxUint32),
		grpc.MaxRecvMsgSize(int(1.5*1024*1024)+512*1024),
		grpc.MaxSendMsgSize(math.MaxInt32),
	)
	pb.RegisterKVServer(s, kv)
	pb.RegisterLeaseServer(s, &Lease{kv: kv})
	return s
}
