package api

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinthdb/plinth/internal/apply"
	"github.com/plinthdb/plinth/internal/lease"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/raftnode"
)

// Errors the backend returns that have etcd equivalents.
var (
	ErrRequestTooLarge = errors.New("api: request is too large")
	ErrTimeout         = errors.New("api: request timed out")
	ErrNoLeader        = errors.New("api: no leader")
	// ErrNotLeader answers a request only the leader can serve.
	ErrNotLeader             = errors.New("api: not leader")
	ErrBadLeaderTransferee   = errors.New("api: bad leader transferee")
	ErrLeaderTransferTimeout = errors.New("api: leader transfer took too long")
	// ErrNoSpace refuses a write that would take the database past its
	// quota (see QuotaChecker).
	ErrNoSpace = errors.New("api: database space exceeded")
)

// toGRPC maps an error to the status etcd answers with, so clients that
// compare against rpctypes (and their retry logic) behave as with etcd.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, mvcc.ErrCompacted):
		return rpctypes.ErrGRPCCompacted
	case errors.Is(err, mvcc.ErrFutureRev):
		return rpctypes.ErrGRPCFutureRev
	case errors.Is(err, mvcc.ErrKeyNotFound):
		return rpctypes.ErrGRPCKeyNotFound
	case errors.Is(err, mvcc.ErrDeleteTooLarge):
		// etcd has no such limit, so no rpctypes error: the message says
		// what to do.
		return status.Error(codes.InvalidArgument, "etcdserver: the range to delete is too large for one request; delete it in smaller ranges")
	case errors.Is(err, mvcc.ErrLeaseNotFound), errors.Is(err, lease.ErrNotFound):
		return rpctypes.ErrGRPCLeaseNotFound
	case errors.Is(err, apply.ErrNoSpace), errors.Is(err, ErrNoSpace):
		return rpctypes.ErrGRPCNoSpace
	case errors.Is(err, apply.ErrCorrupt):
		return rpctypes.ErrGRPCCorrupt
	case errors.Is(err, lease.ErrExists):
		return rpctypes.ErrGRPCLeaseExist
	case errors.Is(err, lease.ErrTTLTooLarge):
		return rpctypes.ErrGRPCLeaseTTLTooLarge
	case errors.Is(err, lease.ErrNotPrimary):
		return rpctypes.ErrGRPCNotLeader
	case errors.Is(err, ErrRequestTooLarge):
		return rpctypes.ErrGRPCRequestTooLarge
	case errors.Is(err, ErrTimeout), errors.Is(err, raftnode.ErrReadTimeout), errors.Is(err, raftnode.ErrProposalExpired):
		return rpctypes.ErrGRPCTimeout
	case errors.Is(err, ErrNoLeader):
		return rpctypes.ErrGRPCNoLeader
	case errors.Is(err, ErrMemberNotFound):
		return rpctypes.ErrGRPCMemberNotFound
	case errors.Is(err, ErrPeerURLExist):
		return rpctypes.ErrGRPCPeerURLExist
	case errors.Is(err, ErrMemberNotLearner):
		return rpctypes.ErrGRPCMemberNotLearner
	case errors.Is(err, ErrLearnerNotReady):
		return rpctypes.ErrGRPCLearnerNotReady
	case errors.Is(err, ErrTooManyLearners):
		return rpctypes.ErrGRPCTooManyLearners
	case errors.Is(err, ErrNotEnoughStarted):
		// etcd maps it to its client-side error value, which gRPC sends
		// as Unknown: the message is what clients match.
		return status.Error(codes.Unknown, rpctypes.ErrorDesc(rpctypes.ErrGRPCMemberNotEnoughStarted))
	case errors.Is(err, ErrUnhealthy):
		return rpctypes.ErrGRPCUnhealthy
	case errors.Is(err, ErrNotLeader):
		return rpctypes.ErrGRPCNotLeader
	case errors.Is(err, ErrBadLeaderTransferee):
		return rpctypes.ErrGRPCBadLeaderTransferee
	case errors.Is(err, ErrLeaderTransferTimeout):
		// etcd has no rpctypes error for it: its message travels as is.
		return status.Error(codes.Unknown, "etcdserver: request timed out, leader transfer took too long")
	case errors.Is(err, raftnode.ErrDropped), errors.Is(err, raftnode.ErrTooManyRequests):
		return rpctypes.ErrGRPCRequestTooManyRequests
	case errors.Is(err, raftnode.ErrStopped):
		return rpctypes.ErrGRPCStopped
	case errors.Is(err, raftnode.ErrLeaderChanged):
		return rpctypes.ErrGRPCLeaderChanged
	case errors.Is(err, context.Canceled):
		return rpctypes.ErrGRPCCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return rpctypes.ErrGRPCDeadlineExceeded
	}
	return status.Error(status.Code(err), err.Error())
}
