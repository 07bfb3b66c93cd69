package lockelect

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/lockelect/v3lockpb"
)

// Lock serves the Lock service.
type Lock struct {
	v3lockpb.UnimplementedLockServer
	core
}

// NewLock returns the Lock service over cfg.
func NewLock(cfg Config) *Lock { return &Lock{core: core{cfg: cfg}} }

// Lock implements Lock.Lock: it puts the caller's key under the lock's
// prefix (or finds it there, for a lease that already waits or holds) and
// waits until no older key is left. If the wait fails, the caller's
// cancellation included, the key is deleted, as etcd deletes it.
func (s *Lock) Lock(ctx context.Context, req *v3lockpb.LockRequest) (*v3lockpb.LockResponse, error) {
	lease, err := s.lease(ctx, req.Lease)
	if err != nil {
		return nil, asEtcd(err)
	}
	prefix := append(append([]byte(nil), req.Name...), '/')
	key := candidateKey(prefix, lease)
	resp, err := s.cfg.KV.Txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{createdAt(key, 0)},
		Success: []*pb.RequestOp{putOp(key, nil, lease), rangeOp(oldest(prefix))},
		Failure: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: key}), rangeOp(oldest(prefix))},
	})
	if err != nil {
		return nil, asEtcd(err)
	}
	myRev := resp.Header.Revision
	if !resp.Succeeded {
		myRev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
	}
	holder := resp.Responses[1].GetResponseRange().Kvs
	if len(holder) == 0 || holder[0].CreateRevision == myRev {
		return &v3lockpb.LockResponse{Header: resp.Header, Key: key}, nil
	}
	if err := s.waitPredecessors(ctx, prefix, myRev-1); err != nil {
		s.release(ctx, key)
		return nil, asEtcd(err)
	}
	// The lease may have ended while the caller waited.
	got, err := s.cfg.KV.Range(ctx, &pb.RangeRequest{Key: key})
	if err != nil {
		s.release(ctx, key)
		return nil, asEtcd(err)
	}
	if len(got.Kvs) == 0 {
		return nil, asEtcd(errSessionExpired)
	}
	return &v3lockpb.LockResponse{Header: got.Header, Key: key}, nil
}

// release deletes the key of a Lock that failed. It outlives the request's
// cancellation, which is the usual reason it runs.
func (s *Lock) release(ctx context.Context, key []byte) {
	_, _ = s.cfg.KV.DeleteRange(context.WithoutCancel(ctx), &pb.DeleteRangeRequest{Key: key})
}

// Unlock implements Lock.Unlock: it deletes the key, whoever holds it.
func (s *Lock) Unlock(ctx context.Context, req *v3lockpb.UnlockRequest) (*v3lockpb.UnlockResponse, error) {
	resp, err := s.cfg.KV.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: req.Key})
	if err != nil {
		return nil, asEtcd(err)
	}
	return &v3lockpb.UnlockResponse{Header: resp.Header}, nil
}
