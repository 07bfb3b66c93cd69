// Package membership keeps the cluster's member records: each member's name,
// peer and client URLs and learner flag, and the IDs of removed members. The
// records are state machine state (storage.PrefixMembers), changed only by the
// apply loop, from committed configuration changes and attribute updates, so
// every member holds the same list at the same applied index.
//
// A record travels in a configuration change's context and sits in Pebble as
// the protobuf encoding of etcd's membershippb.Member. membership never
// decides a change: it records what the log says.
package membership

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/membershippb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/storage"
)

// Member is one member of the cluster.
type Member struct {
	ID         uint64
	Name       string // empty until the member published it
	PeerURLs   []string
	ClientURLs []string // empty until the member published them
	IsLearner  bool
}

// ErrCorrupt marks a member record that Encode did not produce.
var ErrCorrupt = errors.New("membership: corrupt member record")

// Encode encodes m as a record (and as a configuration change's context).
func Encode(m Member) []byte {
	data, err := proto.Marshal(&membershippb.Member{
		ID:               m.ID,
		RaftAttributes:   &membershippb.RaftAttributes{PeerUrls: m.PeerURLs, IsLearner: m.IsLearner},
		MemberAttributes: &membershippb.Attributes{Name: m.Name, ClientUrls: m.ClientURLs},
	})
	if err != nil {
		// Marshal fails only on invalid UTF-8 in strings, which URLs and
		// names from flags and requests never hold after validation.
		panic(fmt.Sprintf("membership: encode member %x: %v", m.ID, err))
	}
	return data
}

// Decode decodes a record made by Encode.
func Decode(data []byte) (Member, error) {
	var pm membershippb.Member
	if err := proto.Unmarshal(data, &pm); err != nil {
		return Member{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if pm.ID == 0 {
		return Member{}, fmt.Errorf("%w: member ID 0", ErrCorrupt)
	}
	return Member{
		ID:         pm.ID,
		Name:       pm.GetMemberAttributes().GetName(),
		PeerURLs:   pm.GetRaftAttributes().GetPeerUrls(),
		ClientURLs: pm.GetMemberAttributes().GetClientUrls(),
		IsLearner:  pm.GetRaftAttributes().GetIsLearner(),
	}, nil
}

// Keys: PrefixMembers + 'm' + ID for a member, PrefixMembers + 'r' + ID for a
// removed one.
const (
	kindMember  = 'm'
	kindRemoved = 'r'
)

func key(kind byte, id uint64) []byte {
	k := []byte{storage.PrefixMembers, kind}
	return binary.BigEndian.AppendUint64(k, id)
}

// Put stages m's record into w.
func Put(w pebble.Writer, m Member) error {
	if err := w.Set(key(kindMember, m.ID), Encode(m), nil); err != nil {
		return fmt.Errorf("membership: stage member %x: %w", m.ID, err)
	}
	return nil
}

// Remove stages the removal of member id into w: its record goes, and its ID
// is remembered as removed for good.
func Remove(w pebble.Writer, id uint64) error {
	if err := w.Delete(key(kindMember, id), nil); err != nil {
		return fmt.Errorf("membership: stage removal of %x: %w", id, err)
	}
	if err := w.Set(key(kindRemoved, id), nil, nil); err != nil {
		return fmt.Errorf("membership: stage removal of %x: %w", id, err)
	}
	return nil
}

// Get reads member id's record; found is false when there is none.
func Get(r pebble.Reader, id uint64) (m Member, found bool, err error) {
	v, closer, err := r.Get(key(kindMember, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return Member{}, false, nil
	}
	if err != nil {
		return Member{}, false, fmt.Errorf("membership: read member %x: %w", id, err)
	}
	defer closer.Close()
	m, err = Decode(v)
	if err != nil {
		return Member{}, false, fmt.Errorf("membership: member %x: %w", id, err)
	}
	return m, true, nil
}

// List reads every member, ordered by ID, and the IDs of removed members.
func List(r pebble.Reader) (members []Member, removed []uint64, err error) {
	iter, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixMembers}, UpperBound: []byte{storage.PrefixMembers + 1}})
	if err != nil {
		return nil, nil, fmt.Errorf("membership: list: %w", err)
	}
	defer iter.Close()
	for valid := iter.First(); valid; valid = iter.Next() {
		k := iter.Key()
		if len(k) != 10 {
			return nil, nil, fmt.Errorf("%w: key %x", ErrCorrupt, k)
		}
		id := binary.BigEndian.Uint64(k[2:])
		switch k[1] {
		case kindMember:
			m, err := Decode(iter.Value())
			if err != nil {
				return nil, nil, fmt.Errorf("membership: member %x: %w", id, err)
			}
			members = append(members, m)
		case kindRemoved:
			removed = append(removed, id)
		default:
			return nil, nil, fmt.Errorf("%w: key %x", ErrCorrupt, k)
		}
	}
	if err := iter.Error(); err != nil {
		return nil, nil, fmt.Errorf("membership: list: %w", err)
	}
	return members, removed, nil // keys order members by ID
}

// IsRemoved reports whether id was removed from the cluster.
func IsRemoved(r pebble.Reader, id uint64) (bool, error) {
	_, closer, err := r.Get(key(kindRemoved, id))
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("membership: read removal of %x: %w", id, err)
	}
	_ = closer.Close()
	return true, nil
}
