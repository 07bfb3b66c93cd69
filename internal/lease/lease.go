// Package lease keeps plinth's leases: the lease table that the apply loop
// changes (each lease's granted TTL and its remaining-TTL checkpoint, and the
// lease -> keys index, in their own key spaces of the database), and, in
// memory, the clock that decides when a lease expires.
//
// Time is kept by the leader. Every member holds a deadline per lease on its
// own monotonic clock: a grant starts it at the full TTL, a checkpoint (a
// remaining TTL the leader measured and proposed through the log) restarts it
// at the checkpointed remaining, a restart restarts it from the persisted
// checkpoint less the time since this member wrote it (on its wall clock, the
// time it was down included: see subtractTimeAway), and a snapshot install
// from the installed checkpoint. The leader (the primary, see Promote)
// alone moves deadlines on keep-alives, finds expired leases and says which
// revokes and checkpoints to propose. A follower's deadline is never earlier
// than the leader's was: it applied the checkpoint after the leader measured
// it. So a new leader starts from a remaining TTL at most a little above the
// one its predecessor reported (by the delay of the last checkpoint's
// replication, plus the extension Promote grants), and below it only by the
// keep-alives its predecessor had not checkpointed yet: the server proposes
// checkpoints of renewed leases at least once an election timeout, which is
// the extension.
//
// The persisted state changes only through the apply loop, the same way on
// every member; deadlines are in memory and differ from member to member.
// lease never imports mvcc and never deletes keys itself: apply deletes a
// revoked lease's keys. It never proposes anything: the server's lease loop
// asks it what to propose.
package lease

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// MaxTTL is etcd's largest lease TTL, in seconds.
const MaxTTL = 9_000_000_000

// Errors of lease requests, with etcd equivalents.
var (
	ErrNotFound    = errors.New("lease: requested lease not found")
	ErrExists      = errors.New("lease: lease already exists")
	ErrTTLTooLarge = errors.New("lease: too large lease TTL")
	// ErrNotPrimary answers a keep-alive or a time-to-live question on a
	// member that does not keep the leases' time: it must go to the leader.
	ErrNotPrimary = errors.New("lease: not the primary lessor")
)

// Table is the lease table. Its apply methods (Grant, Revoke, Checkpoint,
// Attach, Detach) are called by the apply loop only; the rest may be called
// from any goroutine.
type Table struct {
	db  *pebble.DB
	now func() time.Time // monotonic clock readings; time.Now in production

	mu sync.Mutex // guards the fields below; never held across I/O
	// leases is every lease granted and not revoked, as applied so far.
	leases map[int64]*entry
	// primary is set while this member keeps the leases' time (it leads
	// term primaryTerm).
	primary     bool
	primaryTerm uint64

	metrics tableMetrics // see metrics.go; not guarded by mu
}

// entry is one lease in memory.
type entry struct {
	ttl          int64     // granted TTL, seconds
	deadline     time.Time // when the lease expires, on this member's clock
	renewed      bool      // a keep-alive moved deadline since the last checkpoint
	checkpointed time.Time // when the leader last proposed a checkpoint of it
	revoking     time.Time // when the leader proposed its revoke; zero if not
}

// Open loads the lease table from db. now reads the clock: time.Now outside
// tests.
func Open(db *pebble.DB, now func() time.Time) (*Table, error) {
	t := &Table{db: db, now: now, metrics: newTableMetrics()}
	if err := t.Reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// Reload rebuilds the table from the database: at Open, and after its
// contents were replaced underneath it (a snapshot's installation). Every
// deadline restarts from its persisted checkpoint, less the time since this
// member wrote it where it knows (see subtractTimeAway); a primary stays
// primary, with no extension.
func (t *Table) Reload() error {
	leases := map[int64]*entry{}
	persisted := map[int64]int64{} // remaining TTL as written, ms
	it, err := t.db.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixLeases}, UpperBound: []byte{storage.PrefixLeases + 1}})
	if err != nil {
		return fmt.Errorf("lease: load: %w", err)
	}
	now := t.now()
	for it.First(); it.Valid(); it.Next() {
		id, ttl, remainingMs, err := decodeLease(it.Key(), it.Value())
		if err != nil {
			_ = it.Close()
			return err
		}
		leases[id] = &entry{ttl: ttl, deadline: now.Add(time.Duration(remainingMs) * time.Millisecond), checkpointed: now}
		persisted[id] = remainingMs
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("lease: load: %w", err)
	}
	if err := t.subtractTimeAway(leases, persisted, now); err != nil {
		return err
	}
	t.mu.Lock()
	t.leases = leases
	t.mu.Unlock()
	return nil
}

// subtractTimeAway moves back the deadlines of leases that were loaded at
// now from their persisted remaining TTLs (persisted, in ms): the time since
// each was written has passed for the lease too, most of it while this
// member was down. A lease's clock record says when, on this member's wall
// clock, its remaining TTL was written here; it is believed only when it
// describes the remaining TTL the table holds (both are written in one
// batch, and a snapshot's install clears the records). A wall clock that
// went back counts as no time.
func (t *Table) subtractTimeAway(leases map[int64]*entry, persisted map[int64]int64, now time.Time) error {
	it, err := t.db.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixLeaseClock}, UpperBound: []byte{storage.PrefixLeaseClock + 1}})
	if err != nil {
		return fmt.Errorf("lease: load clock records: %w", err)
	}
	for it.First(); it.Valid(); it.Next() {
		id, remainingMs, wallMs, err := decodeClock(it.Key(), it.Value())
		if err != nil {
			_ = it.Close()
			return err
		}
		l, ok := leases[id]
		if !ok || persisted[id] != remainingMs {
			continue
		}
		away := time.Duration(max(now.UnixMilli()-wallMs, 0)) * time.Millisecond
		l.deadline = l.deadline.Add(-min(away, time.Duration(remainingMs)*time.Millisecond))
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("lease: load clock records: %w", err)
	}
	return nil
}

// writeClock stages the clock record of lease id: remainingMs was written
// (in the same batch) at now on this member's wall clock.
func writeClock(w pebble.Writer, id, remainingMs int64, now time.Time) error {
	if err := w.Set(idKey(storage.PrefixLeaseClock, id), encodePair(remainingMs, max(now.UnixMilli(), 0)), nil); err != nil {
		return fmt.Errorf("lease: stage clock record of %x: %w", id, err)
	}
	return nil
}

// leaseKey is a lease's key in the table's key space.
func leaseKey(id int64) []byte { return idKey(storage.PrefixLeases, id) }

// idKey is a lease's key in the key space prefix: the lease table's, or
// the clock records'.
func idKey(prefix byte, id int64) []byte {
	k := make([]byte, 9)
	k[0] = prefix
	binary.BigEndian.PutUint64(k[1:], uint64(id))
	return k
}

// A lease's record: its granted TTL in seconds and its remaining TTL at the
// last checkpoint in milliseconds. A clock record: the remaining TTL in
// milliseconds it describes and the wall-clock time it was written at, in
// Unix milliseconds. Both are two uvarints (encodePair).
func encodeLease(ttl, remainingMs int64) []byte { return encodePair(ttl, remainingMs) }

func decodeLease(k, v []byte) (id, ttl, remainingMs int64, err error) {
	return decodePair("record", k, v)
}

func decodeClock(k, v []byte) (id, remainingMs, wallMs int64, err error) {
	return decodePair("clock record", k, v)
}

func encodePair(a, b int64) []byte {
	v := binary.AppendUvarint(nil, uint64(a))
	return binary.AppendUvarint(v, uint64(b))
}

// decodePair splits a record of a lease's key spaces (what names it in
// errors) into the lease's ID and the record's two numbers.
func decodePair(what string, k, v []byte) (id, a, b int64, err error) {
	if len(k) != 9 {
		return 0, 0, 0, fmt.Errorf("lease: corrupt %s key %x: %w", what, k, storage.ErrCorrupt)
	}
	id = int64(binary.BigEndian.Uint64(k[1:]))
	x, n := binary.Uvarint(v)
	if n <= 0 {
		return 0, 0, 0, fmt.Errorf("lease: corrupt %s of lease %x: %w", what, id, storage.ErrCorrupt)
	}
	y, m := binary.Uvarint(v[n:])
	if m <= 0 || n+m != len(v) {
		return 0, 0, 0, fmt.Errorf("lease: corrupt %s of lease %x: %w", what, id, storage.ErrCorrupt)
	}
	return id, int64(x), int64(y), nil
}

// indexPrefix is the start of a lease's keys in the lease -> keys index.
func indexPrefix(id int64) []byte {
	k := make([]byte, 9, 9+32)
	k[0] = storage.PrefixLeaseKeys
	binary.BigEndian.PutUint64(k[1:], uint64(id))
	return k
}

func indexKey(id int64, key []byte) []byte {
	return append(indexPrefix(id), key...)
}

// Exists reports whether lease id is granted and not revoked.
func (t *Table) Exists(id int64) bool {
	t.mu.Lock()
	_, ok := t.leases[id]
	t.mu.Unlock()
	return ok
}

// Grant grants lease id for ttl seconds, staged in w. The TTL is taken as
// it comes: the proposer raised it to the minimum already, so that every
// member stores the same one.
func (t *Table) Grant(w *pebble.Batch, id, ttl int64) error {
	if ttl > MaxTTL {
		return ErrTTLTooLarge
	}
	if id == 0 {
		return ErrNotFound // etcd's answer for the ID that means no lease
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.leases[id]; ok {
		return ErrExists
	}
	if err := w.Set(leaseKey(id), encodeLease(ttl, ttl*1000), nil); err != nil {
		return fmt.Errorf("lease: stage grant of %x: %w", id, err)
	}
	now := t.now()
	if err := writeClock(w, id, ttl*1000, now); err != nil {
		return err
	}
	t.leases[id] = &entry{ttl: ttl, deadline: now.Add(time.Duration(ttl) * time.Second), checkpointed: now}
	t.metrics.granted.Inc()
	t.metrics.ttls.Observe(float64(ttl))
	return nil
}

// Load writes lease id, granted for ttl seconds with remaining left, and
// its attached keys into w: a lease table built from another store's state
// (an etcd snapshot) rather than granted through the log. The database it
// writes must not be open under a Table yet; Open loads what it wrote.
func Load(w pebble.Writer, id, ttl int64, remaining time.Duration, keys [][]byte) error {
	if id == 0 {
		return fmt.Errorf("lease: load lease 0: %w", ErrNotFound)
	}
	if ttl < 1 || ttl > MaxTTL {
		return fmt.Errorf("lease: load lease %x: TTL %d out of range", id, ttl)
	}
	remainingMs := min(max(remaining.Milliseconds(), 0), ttl*1000)
	if err := w.Set(leaseKey(id), encodeLease(ttl, remainingMs), nil); err != nil {
		return fmt.Errorf("lease: load lease %x: %w", id, err)
	}
	for _, k := range keys {
		if err := w.Set(indexKey(id, k), nil, nil); err != nil {
			return fmt.Errorf("lease: load key %q of lease %x: %w", k, id, err)
		}
	}
	return nil
}

// Keys returns the keys attached to lease id, as r (the database, or a batch
// that sees its own writes) has them, in key order.
func Keys(r pebble.Reader, id int64) ([][]byte, error) {
	prefix := indexPrefix(id)
	end := indexPrefix(id + 1)
	if id == -1 { // the last ID: its keys run to the end of the key space
		end = []byte{storage.PrefixLeaseKeys + 1}
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: end})
	if err != nil {
		return nil, fmt.Errorf("lease: keys of %x: %w", id, err)
	}
	var keys [][]byte
	for it.First(); it.Valid(); it.Next() {
		keys = append(keys, slices.Clone(it.Key()[len(prefix):]))
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("lease: keys of %x: %w", id, err)
	}
	return keys, nil
}

// Keys returns the keys attached to lease id, as applied.
func (t *Table) Keys(id int64) ([][]byte, error) { return Keys(t.db, id) }

// Revoke removes lease id and its key index, staged in w. The caller deletes
// the keys first (see Keys).
func (t *Table) Revoke(w *pebble.Batch, id int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.leases[id]; !ok {
		return ErrNotFound
	}
	if err := w.Delete(leaseKey(id), nil); err != nil {
		return fmt.Errorf("lease: stage revoke of %x: %w", id, err)
	}
	if err := w.Delete(idKey(storage.PrefixLeaseClock, id), nil); err != nil {
		return fmt.Errorf("lease: stage revoke of %x: %w", id, err)
	}
	end := indexPrefix(id + 1)
	if id == -1 {
		end = []byte{storage.PrefixLeaseKeys + 1}
	}
	if err := w.DeleteRange(indexPrefix(id), end, nil); err != nil {
		return fmt.Errorf("lease: stage revoke of %x: %w", id, err)
	}
	delete(t.leases, id)
	t.metrics.revoked.Inc()
	return nil
}

// Attach records that key is attached to lease id, staged in w.
func (t *Table) Attach(w *pebble.Batch, id int64, key []byte) error {
	if err := w.Set(indexKey(id, key), nil, nil); err != nil {
		return fmt.Errorf("lease: stage attach of %q to %x: %w", key, id, err)
	}
	return nil
}

// Detach records that key is no longer attached to lease id, staged in w.
func (t *Table) Detach(w *pebble.Batch, id int64, key []byte) error {
	if err := w.Delete(indexKey(id, key), nil); err != nil {
		return fmt.Errorf("lease: stage detach of %q from %x: %w", key, id, err)
	}
	return nil
}

// Checkpoint records the remaining TTLs the leader measured, staged in w.
// cps' RemainingTTL fields are in milliseconds (see package entry); leases
// revoked since are skipped. term is the term of the entry that carried them:
// the primary ignores its own checkpoints (its deadlines are the ones
// measured), and takes an earlier leader's only where they are later than
// its own deadline, as a follower's would be.
func (t *Table) Checkpoint(w *pebble.Batch, cps []*pb.LeaseCheckpoint, term uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, cp := range cps {
		l, ok := t.leases[cp.ID]
		if !ok {
			continue
		}
		remaining := max(cp.Remaining_TTL, 0)
		if err := w.Set(leaseKey(cp.ID), encodeLease(l.ttl, remaining), nil); err != nil {
			return fmt.Errorf("lease: stage checkpoint of %x: %w", cp.ID, err)
		}
		if err := writeClock(w, cp.ID, remaining, now); err != nil {
			return err
		}
		deadline := now.Add(time.Duration(remaining) * time.Millisecond)
		switch {
		case !t.primary:
			l.deadline = deadline
		case term != t.primaryTerm && deadline.After(l.deadline):
			l.deadline = deadline
		}
	}
	return nil
}

// IDs returns the IDs of every lease, in order.
func (t *Table) IDs() []int64 {
	t.mu.Lock()
	ids := make([]int64, 0, len(t.leases))
	for id := range t.leases {
		ids = append(ids, id)
	}
	t.mu.Unlock()
	slices.Sort(ids)
	return ids
}
