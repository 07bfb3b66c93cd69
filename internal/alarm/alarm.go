// Package alarm keeps the cluster's active alarms: NOSPACE, raised by a
// member whose database outgrew its quota, and CORRUPT, raised when members'
// hashes disagree. Alarms are state machine state: they change only when an
// applied entry activates or deactivates one, so every member holds the same
// list at the same applied index and refuses the same requests.
//
// The table is written in the apply batch (Activate, Deactivate) and read by
// any goroutine (List, Active). alarm never proposes anything: raising an
// alarm is the caller's proposal.
package alarm

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// Table is the set of active alarms.
type Table struct {
	mu     sync.RWMutex // guards active
	active []*pb.AlarmMember
	// noSpace and corrupt say whether an alarm of that type is active,
	// for the apply loop's checks on every write.
	noSpace, corrupt atomic.Bool
}

// Load reads the active alarms from r.
func Load(r pebble.Reader) (*Table, error) {
	t := &Table{}
	return t, t.Reload(r)
}

// Reload replaces the table with the alarms r holds, after the state machine
// was replaced underneath it (a Raft snapshot's installation).
func (t *Table) Reload(r pebble.Reader) error {
	span := storage.PrefixSpan(storage.PrefixAlarms)
	iter, err := r.NewIter(&pebble.IterOptions{LowerBound: span.Start, UpperBound: span.End})
	if err != nil {
		return fmt.Errorf("alarm: load: %w", err)
	}
	var active []*pb.AlarmMember
	for valid := iter.First(); valid; valid = iter.Next() {
		k := iter.Key()
		if len(k) != 1+8+4 {
			_ = iter.Close()
			return fmt.Errorf("alarm: key %x: %w", k, storage.ErrCorrupt)
		}
		active = append(active, &pb.AlarmMember{
			MemberID: binary.BigEndian.Uint64(k[1:]),
			Alarm:    pb.AlarmType(binary.BigEndian.Uint32(k[9:])),
		})
	}
	if err := iter.Close(); err != nil {
		return fmt.Errorf("alarm: load: %w", err)
	}
	t.mu.Lock()
	t.active = active
	t.refreshLocked()
	t.mu.Unlock()
	return nil
}

func key(a *pb.AlarmMember) []byte {
	k := []byte{storage.PrefixAlarms}
	k = binary.BigEndian.AppendUint64(k, a.MemberID)
	return binary.BigEndian.AppendUint32(k, uint32(a.Alarm))
}

func less(a, b *pb.AlarmMember) int {
	if a.MemberID != b.MemberID {
		if a.MemberID < b.MemberID {
			return -1
		}
		return 1
	}
	return int(a.Alarm) - int(b.Alarm)
}

// Activate stages alarm typ of member into w and records it as active. It
// returns the alarm, as etcd's applier answers an activation, whether it was
// new or already active.
func (t *Table) Activate(w pebble.Writer, member uint64, typ pb.AlarmType) (*pb.AlarmMember, error) {
	a := &pb.AlarmMember{MemberID: member, Alarm: typ}
	t.mu.Lock()
	defer t.mu.Unlock()
	i, found := slices.BinarySearchFunc(t.active, a, less)
	if found {
		return t.active[i], nil
	}
	if err := w.Set(key(a), nil, nil); err != nil {
		return nil, fmt.Errorf("alarm: stage %v of %x: %w", typ, member, err)
	}
	t.active = slices.Insert(t.active, i, a)
	t.refreshLocked()
	return a, nil
}

// Deactivate stages the removal of alarm typ of member into w. It returns the
// alarm removed, or nil when it was not active.
func (t *Table) Deactivate(w pebble.Writer, member uint64, typ pb.AlarmType) (*pb.AlarmMember, error) {
	a := &pb.AlarmMember{MemberID: member, Alarm: typ}
	t.mu.Lock()
	defer t.mu.Unlock()
	i, found := slices.BinarySearchFunc(t.active, a, less)
	if !found {
		return nil, nil
	}
	if err := w.Delete(key(a), nil); err != nil {
		return nil, fmt.Errorf("alarm: stage removal of %v of %x: %w", typ, member, err)
	}
	removed := t.active[i]
	t.active = slices.Delete(t.active, i, i+1)
	t.refreshLocked()
	return removed, nil
}

func (t *Table) refreshLocked() {
	var noSpace, corrupt bool
	for _, a := range t.active {
		switch a.Alarm {
		case pb.AlarmType_NOSPACE:
			noSpace = true
		case pb.AlarmType_CORRUPT:
			corrupt = true
		}
	}
	t.noSpace.Store(noSpace)
	t.corrupt.Store(corrupt)
}

// List returns the active alarms, ordered by member and type. The caller
// must not modify them.
func (t *Table) List() []*pb.AlarmMember {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Clone(t.active)
}

// NoSpace tells whether a NOSPACE alarm is active on any member.
func (t *Table) NoSpace() bool { return t.noSpace.Load() }

// Corrupt tells whether a CORRUPT alarm is active on any member.
func (t *Table) Corrupt() bool { return t.corrupt.Load() }
