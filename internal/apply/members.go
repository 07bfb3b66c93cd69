package apply

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/membershippb"
	raftpb "go.etcd.io/raft/v3/raftpb"

	"github.com/plinthdb/plinth/internal/entry"
	"github.com/plinthdb/plinth/internal/membership"
)

// applyConfChange records a committed configuration change in the member
// records, staged in w (an indexed batch). The change's context is the record
// of the member it adds or updates. It returns the ID of the request that
// proposed the change (0 for none).
func applyConfChange(w *pebble.Batch, e *raftpb.Entry) (uint64, error) {
	cc, reqID, err := entry.DecodeConfChange(e)
	if errors.Is(err, entry.ErrNotConfChange) {
		return 0, fmt.Errorf("%w: %w", ErrUnknownRequest, err)
	}
	if err != nil {
		return 0, err
	}
	v2 := cc.AsV2()
	for _, c := range v2.GetChanges() {
		id := c.GetNodeId()
		switch c.GetType() {
		case raftpb.ConfChangeType_ConfChangeAddNode, raftpb.ConfChangeType_ConfChangeAddLearnerNode:
			learner := c.GetType() == raftpb.ConfChangeType_ConfChangeAddLearnerNode
			m, found, err := membership.Get(w, id)
			if err != nil {
				return 0, err
			}
			if !found {
				if m, err = contextMember(v2.GetContext(), id); err != nil {
					return 0, err
				}
			}
			m.IsLearner = learner
			if err := membership.Put(w, m); err != nil {
				return 0, err
			}
		case raftpb.ConfChangeType_ConfChangeRemoveNode:
			if err := membership.Remove(w, id); err != nil {
				return 0, err
			}
		case raftpb.ConfChangeType_ConfChangeUpdateNode:
			m, found, err := membership.Get(w, id)
			if err != nil || !found {
				return 0, err
			}
			update, err := contextMember(v2.GetContext(), id)
			if err != nil {
				return 0, err
			}
			m.PeerURLs = update.PeerURLs
			if err := membership.Put(w, m); err != nil {
				return 0, err
			}
		default:
			return 0, fmt.Errorf("%w: conf change type %v", ErrUnknownRequest, c.GetType())
		}
	}
	return reqID, nil
}

// contextMember decodes the member record a conf change carries for id.
func contextMember(ctx []byte, id uint64) (membership.Member, error) {
	m, err := membership.Decode(ctx)
	if err != nil {
		return membership.Member{}, fmt.Errorf("conf change for member %x: %w", id, err)
	}
	if m.ID != id {
		return membership.Member{}, fmt.Errorf("conf change for member %x carries the record of %x: %w", id, m.ID, membership.ErrCorrupt)
	}
	return m, nil
}

// setMemberAttributes records the name and client URLs a member published.
// A member that is gone keeps no record.
func setMemberAttributes(w *pebble.Batch, req *membershippb.ClusterMemberAttrSetRequest) error {
	m, found, err := membership.Get(w, req.Member_ID)
	if err != nil || !found {
		return err
	}
	m.Name = req.GetMemberAttributes().GetName()
	m.ClientURLs = req.GetMemberAttributes().GetClientUrls()
	return membership.Put(w, m)
}
