package lockelect

import (
	"bytes"
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/plinthdb/plinth/internal/lockelect/v3electionpb"
)

// Election serves the Election service.
type Election struct {
	v3electionpb.UnimplementedElectionServer
	core
}

// NewElection returns the Election service over cfg.
func NewElection(cfg Config) *Election { return &Election{core: core{cfg: cfg}} }

func electionPrefix(name []byte) []byte { return append(append([]byte(nil), name...), '/') }

// Campaign implements Election.Campaign: it puts the caller's key with its
// value under the election's prefix (or, for a lease already campaigning,
// sets the value of its key) and waits until no older key is left. If the
// caller cancels the wait, its candidacy is withdrawn, as etcd withdraws it.
func (s *Election) Campaign(ctx context.Context, req *v3electionpb.CampaignRequest) (*v3electionpb.CampaignResponse, error) {
	lease, err := s.lease(ctx, req.Lease)
	if err != nil {
		return nil, asEtcd(err)
	}
	prefix := electionPrefix(req.Name)
	key := candidateKey(prefix, lease)
	resp, err := s.cfg.KV.Txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{createdAt(key, 0)},
		Success: []*pb.RequestOp{putOp(key, req.Value, lease)},
		Failure: []*pb.RequestOp{rangeOp(&pb.RangeRequest{Key: key})},
	})
	if err != nil {
		return nil, asEtcd(err)
	}
	leader := &v3electionpb.LeaderKey{Name: req.Name, Key: key, Rev: resp.Header.Revision, Lease: lease}
	if !resp.Succeeded {
		kv := resp.Responses[0].GetResponseRange().Kvs[0]
		leader.Rev = kv.CreateRevision
		if !bytes.Equal(kv.Value, req.Value) {
			if _, err := s.proclaim(ctx, leader, req.Value); err != nil {
				_, _ = s.resign(ctx, leader)
				return nil, asEtcd(err)
			}
		}
	}
	if err := s.waitPredecessors(ctx, prefix, leader.Rev-1); err != nil {
		if ctx.Err() != nil {
			_, _ = s.resign(context.WithoutCancel(ctx), leader)
		}
		return nil, asEtcd(err)
	}
	return &v3electionpb.CampaignResponse{Header: resp.Header, Leader: leader}, nil
}

// proclaim sets the value of leader's key if the key is still the one
// leader names.
func (s *Election) proclaim(ctx context.Context, leader *v3electionpb.LeaderKey, value []byte) (*pb.ResponseHeader, error) {
	resp, err := s.cfg.KV.Txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{createdAt(leader.Key, leader.Rev)},
		Success: []*pb.RequestOp{putOp(leader.Key, value, leader.Lease)},
	})
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		return nil, errNotLeader
	}
	return resp.Header, nil
}

// resign deletes leader's key if it is still the one leader names.
func (s *Election) resign(ctx context.Context, leader *v3electionpb.LeaderKey) (*pb.ResponseHeader, error) {
	resp, err := s.cfg.KV.Txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{createdAt(leader.Key, leader.Rev)},
		Success: []*pb.RequestOp{deleteOp(leader.Key)},
	})
	if err != nil {
		return nil, err
	}
	return resp.Header, nil
}

// resumed is the leadership a Proclaim or Resign names, with the lease etcd
// gives it: a request naming lease 0 gets a new one, as in etcd.
func (s *Election) resumed(ctx context.Context, leader *v3electionpb.LeaderKey) (*v3electionpb.LeaderKey, error) {
	if leader == nil {
		return nil, errMissingLeader
	}
	lease, err := s.lease(ctx, leader.Lease)
	if err != nil {
		return nil, err
	}
	return &v3electionpb.LeaderKey{Name: leader.Name, Key: leader.Key, Rev: leader.Rev, Lease: lease}, nil
}

// Proclaim implements Election.Proclaim.
func (s *Election) Proclaim(ctx context.Context, req *v3electionpb.ProclaimRequest) (*v3electionpb.ProclaimResponse, error) {
	leader, err := s.resumed(ctx, req.Leader)
	if err != nil {
		return nil, asEtcd(err)
	}
	h, err := s.proclaim(ctx, leader, req.Value)
	if err != nil {
		return nil, asEtcd(err)
	}
	return &v3electionpb.ProclaimResponse{Header: h}, nil
}

// Resign implements Election.Resign. Resigning a leadership that has
// already ended is no error.
func (s *Election) Resign(ctx context.Context, req *v3electionpb.ResignRequest) (*v3electionpb.ResignResponse, error) {
	leader, err := s.resumed(ctx, req.Leader)
	if err != nil {
		return nil, asEtcd(err)
	}
	h, err := s.resign(ctx, leader)
	if err != nil {
		return nil, asEtcd(err)
	}
	return &v3electionpb.ResignResponse{Header: h}, nil
}

// Leader implements Election.Leader.
func (s *Election) Leader(ctx context.Context, req *v3electionpb.LeaderRequest) (*v3electionpb.LeaderResponse, error) {
	resp, err := s.cfg.KV.Range(ctx, oldest(electionPrefix(req.Name)))
	if err != nil {
		return nil, asEtcd(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, errNoLeader
	}
	return &v3electionpb.LeaderResponse{Header: resp.Header, Kv: resp.Kvs[0]}, nil
}

// Observe implements Election.Observe: it sends the leader's key and value
// now (or once there is a leader), then again each time the leader's key
// changes, and moves on to the next leader when that key is deleted.
func (s *Election) Observe(req *v3electionpb.LeaderRequest, stream v3electionpb.Election_ObserveServer) error {
	ctx := stream.Context()
	prefix := electionPrefix(req.Name)
	for {
		resp, err := s.cfg.KV.Range(ctx, oldest(prefix))
		if err != nil {
			return asEtcd(err)
		}
		var kv *mvccpb.KeyValue
		var hdr *pb.ResponseHeader
		if len(resp.Kvs) > 0 {
			hdr, kv = resp.Header, resp.Kvs[0]
		} else {
			// No leader: the first key put under the prefix is the
			// next one.
			err := s.watch(ctx, prefix, prefixEnd(prefix), resp.Header.Revision, func(h *pb.ResponseHeader, evs []*mvccpb.Event) (bool, error) {
				for _, ev := range evs {
					if ev.Type == mvccpb.PUT {
						hdr, kv = h, ev.Kv
						hdr.Revision = kv.ModRevision
						return true, nil
					}
				}
				return false, nil
			})
			if err != nil {
				return asEtcd(err)
			}
		}
		if err := stream.Send(&v3electionpb.LeaderResponse{Header: hdr, Kv: kv}); err != nil {
			return err
		}
		err = s.watch(ctx, kv.Key, nil, hdr.Revision+1, func(h *pb.ResponseHeader, evs []*mvccpb.Event) (bool, error) {
			for _, ev := range evs {
				if ev.Type == mvccpb.DELETE {
					return true, nil
				}
				if err := stream.Send(&v3electionpb.LeaderResponse{Header: h, Kv: ev.Kv}); err != nil {
					return false, err
				}
			}
			return false, nil
		})
		if err != nil {
			return asEtcd(err)
		}
	}
}
