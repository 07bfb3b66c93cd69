package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/plinthdb/plinth/internal/membership"
)

// A learner serves what etcd's learners serve and refuses the rest with
// "rpc not supported for learner": it is not a voter, may lag the leader by
// any amount, and its clients are expected to use the voters. Of the unary
// calls it answers Status and serializable ranges (its own, possibly stale,
// state, as asked); of the streams only Snapshot. Everything else, writes
// and linearizable reads included, a client must send to a voter.

// snapshotMethod is the one stream a learner serves.
const snapshotMethod = "/etcdserverpb.Maintenance/Snapshot"

// memberCheckKey marks, in a request's metadata, the HashKV that another
// member's corruption check asks (see hashKVOf): etcd's members ask each
// other over the peer URLs, where learners answer too, so a learner's data
// is checked like a voter's; its clients still get etcd's refusal.
const memberCheckKey = "plinth-member-check"

// noteSelf records whether this member is a learner, from a membership that
// lists it; a membership without it changes nothing.
func (s *Server) noteSelf(members []membership.Member) {
	for _, m := range members {
		if m.ID == s.memberID {
			s.learner.Store(m.IsLearner)
			return
		}
	}
}

// servedByLearner tells whether a learner answers the unary request req.
func servedByLearner(ctx context.Context, req any) bool {
	switch r := req.(type) {
	case *pb.StatusRequest:
		return true
	case *pb.HashKVRequest:
		return len(metadata.ValueFromIncomingContext(ctx, memberCheckKey)) > 0
	case *pb.RangeRequest:
		return r.GetSerializable()
	default:
		return false
	}
}

// refuseOnLearnerUnary is the unary interceptor that turns away what a
// learner does not serve.
func (s *Server) refuseOnLearnerUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.learner.Load() && !servedByLearner(ctx, req) {
		return nil, rpctypes.ErrGRPCNotSupportedForLearner
	}
	return handler(ctx, req)
}

// refuseOnLearnerStream is refuseOnLearnerUnary for streams.
func (s *Server) refuseOnLearnerStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.learner.Load() && info.FullMethod != snapshotMethod {
		return rpctypes.ErrGRPCNotSupportedForLearner
	}
	return handler(srv, ss)
}
