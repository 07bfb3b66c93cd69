package apply

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/lease"
	"github.com/plinthdb/plinth/internal/mvcc"
)

// Leases returns the lease table the applier keeps.
func (a *Applier) Leases() *lease.Table { return a.leases }

// indexLeases keeps the lease -> keys index of the lease table with b's
// writes: every change of a key's lease is staged in the same batch.
func (a *Applier) indexLeases(b *mvcc.Batch) {
	w := b.Writer()
	b.OnLeaseChange(func(key []byte, old, new int64) error {
		if old != 0 {
			if err := a.leases.Detach(w, old, key); err != nil {
				return err
			}
		}
		if new != 0 {
			return a.leases.Attach(w, new, key)
		}
		return nil
	})
}

func (a *Applier) grantLease(b *mvcc.Batch, req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if err := a.leases.Grant(b.Writer(), req.ID, req.TTL); err != nil {
		return nil, err
	}
	return &pb.LeaseGrantResponse{Header: &pb.ResponseHeader{Revision: b.Rev()}, ID: req.ID, TTL: req.TTL}, nil
}

// revokeLease deletes every key attached to the lease, all at one revision,
// and then the lease.
func (a *Applier) revokeLease(b *mvcc.Batch, id int64) (*pb.LeaseRevokeResponse, error) {
	if !a.leases.Exists(id) {
		return nil, lease.ErrNotFound
	}
	keys, err := lease.Keys(b.Writer(), id)
	if err != nil {
		return nil, err
	}
	rev, err := b.DeleteKeys(keys)
	if err != nil {
		return nil, err
	}
	if err := a.leases.Revoke(b.Writer(), id); err != nil {
		return nil, err
	}
	return &pb.LeaseRevokeResponse{Header: &pb.ResponseHeader{Revision: rev}}, nil
}
