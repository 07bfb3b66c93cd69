package lease

import (
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// The primary's side: the leader keeps the leases' time. The server's lease
// loop promotes this member when it leads, demotes it when it no longer
// does, and proposes what Expired and Checkpoints return.

// Promote makes this member the primary for term. Each deadline, carried
// over from what this member applied, is extended by extend (at most the
// election timeout): the time no leader could take keep-alives in. A lease
// expired already stays expired.
func (t *Table) Promote(term uint64, extend time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.primary, t.primaryTerm = true, term
	now := t.now()
	for _, l := range t.leases {
		if l.deadline.After(now) {
			l.deadline = l.deadline.Add(extend)
		}
		l.revoking = time.Time{}
		l.renewed = true // the extension is for the followers to learn
	}
}

// Demote ends this member's time as the primary.
func (t *Table) Demote() {
	t.mu.Lock()
	t.primary = false
	t.mu.Unlock()
}

// Primary reports whether this member keeps the leases' time, and for which
// term.
func (t *Table) Primary() (bool, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.primary, t.primaryTerm
}

// Renew restarts lease id's TTL (a keep-alive) and returns the TTL granted.
// An expired lease whose revoke is on its way is not found.
func (t *Table) Renew(id int64) (int64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.primary {
		return 0, ErrNotPrimary
	}
	l, ok := t.leases[id]
	if !ok {
		return 0, ErrNotFound
	}
	now := t.now()
	if !now.Before(l.deadline) {
		return 0, ErrNotFound
	}
	l.deadline = now.Add(time.Duration(l.ttl) * time.Second)
	l.renewed = true
	t.metrics.renewed.Inc()
	return l.ttl, nil
}

// Remaining returns the time lease id has left and its granted TTL, on the
// primary.
func (t *Table) Remaining(id int64) (remaining time.Duration, ttl int64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.primary {
		return 0, 0, ErrNotPrimary
	}
	l, ok := t.leases[id]
	if !ok {
		return 0, 0, ErrNotFound
	}
	return l.deadline.Sub(t.now()), l.ttl, nil
}

// Expired returns up to limit expired leases to revoke, on the primary. A
// lease returned is not returned again for retry (its revoke may have been
// lost on the way) unless it is still there then.
func (t *Table) Expired(limit int, retry time.Duration) []int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.primary {
		return nil
	}
	now := t.now()
	var ids []int64
	for id, l := range t.leases {
		if len(ids) >= limit {
			break
		}
		if now.Before(l.deadline) || (!l.revoking.IsZero() && now.Sub(l.revoking) < retry) {
			continue
		}
		l.revoking = now
		ids = append(ids, id)
	}
	return ids
}

// Checkpoints returns, on the primary, up to limit remaining TTLs to propose
// (in milliseconds, rounded up, see package entry): of the leases renewed
// since their last checkpoint, and of those whose last checkpoint is at
// least refresh old, so that a restart resumes near where time was.
func (t *Table) Checkpoints(limit int, refresh time.Duration) []*pb.LeaseCheckpoint {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.primary {
		return nil
	}
	now := t.now()
	var cps []*pb.LeaseCheckpoint
	for id, l := range t.leases {
		if len(cps) >= limit {
			break
		}
		left := l.deadline.Sub(now)
		if left <= 0 || !l.revoking.IsZero() || (!l.renewed && now.Sub(l.checkpointed) < refresh) {
			continue
		}
		l.renewed, l.checkpointed = false, now
		cps = append(cps, &pb.LeaseCheckpoint{ID: id, Remaining_TTL: int64((left + time.Millisecond - 1) / time.Millisecond)})
	}
	return cps
}
