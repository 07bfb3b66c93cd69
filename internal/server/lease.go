package server

import (
	"context"
	"errors"
	"math"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/api"
	"github.com/plinthdb/plinth/internal/entry"
	"github.com/plinthdb/plinth/internal/lease"
)

// Leases: the leader keeps their time (see package lease). The lease loop
// makes this member the primary lessor while it leads, proposes the revokes
// of expired leases and, in batches, checkpoints of remaining TTLs, so that
// the next leader and a restarted member resume near where time was.
// Keep-alives and time-to-live questions that reach a follower go to the
// leader (leaseforward.go).
const (
	// leaseTick is how often the loop looks for expired leases.
	leaseTick = 100 * time.Millisecond
	// leaseCheckpointInterval is how often renewed leases' remaining TTLs
	// are proposed (or once an election timeout, if that is shorter): the
	// keep-alives a new leader may not know of, which the extension it
	// grants on taking over must cover.
	leaseCheckpointInterval = 500 * time.Millisecond
	// leaseCheckpointRefresh is how old a lease's last checkpoint may grow
	// without a keep-alive: what a restart may give back.
	leaseCheckpointRefresh = 5 * time.Second
	// leaseCheckpointBatch is the most leases one checkpoint carries.
	leaseCheckpointBatch = 1000
	// leaseRevokesPerTick bounds the revokes proposed per tick (etcd's rate
	// is 1000 a second).
	leaseRevokesPerTick = 100
	// leaseRevokeRetry is when a revoke that did not apply is proposed
	// again.
	leaseRevokeRetry = 3 * time.Second
)

// leases is the lease table the applier keeps.
func (s *Server) leases() *lease.Table { return s.applier.Leases() }

// runLeases is the lease loop. It runs until Stop.
func (s *Server) runLeases() {
	defer s.serveWG.Done()
	t := time.NewTicker(leaseTick)
	defer t.Stop()
	lastCheckpoint := time.Now()
	for {
		select {
		case <-s.stopCtx.Done():
			return
		case <-t.C:
			if !s.syncLeadership() {
				continue
			}
			_, term := s.leases().Primary()
			expired := s.leases().Expired(leaseRevokesPerTick, leaseRevokeRetry)
			s.metrics.leasesExpired.Add(float64(len(expired)))
			for _, id := range expired {
				s.proposeLeaseChange(term, &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: id}})
			}
			// The clock, not the tick's time: a tick read late (a busy
			// machine) carries the time it was sent, and checkpoints
			// spaced by tick times could go out closer together than the
			// interval.
			now := time.Now()
			if now.Sub(lastCheckpoint) < s.checkpointInterval() {
				continue
			}
			lastCheckpoint = now
			for {
				cps := s.leases().Checkpoints(leaseCheckpointBatch, leaseCheckpointRefresh)
				if len(cps) == 0 {
					break
				}
				s.proposeLeaseChange(term, &pb.InternalRaftRequest{LeaseCheckpoint: &pb.LeaseCheckpointRequest{Checkpoints: cps}})
			}
		}
	}
}

// checkpointInterval is how often the leader proposes checkpoints of renewed
// leases.
func (s *Server) checkpointInterval() time.Duration {
	return min(leaseCheckpointInterval, s.cfg.ElectionTimeout)
}

// syncLeadership makes this member the primary lessor when it leads, and
// ends that when it no longer does. It reports whether it is the primary.
func (s *Server) syncLeadership() bool {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	t := s.leases()
	primary, term := t.Primary()
	leads := s.node.Leader() == s.memberID
	switch cur := s.node.Term(); {
	case leads && (!primary || term != cur):
		t.Promote(cur, s.cfg.ElectionTimeout)
		s.logger.Info("keeping the leases' time", "term", cur)
		return true
	case !leads && primary:
		t.Demote()
		return false
	}
	return primary
}

// proposeLeaseChange proposes a revoke or checkpoint the leader of term
// decided on, without waiting for it: a lost one is proposed again later.
// Only this member's Raft, as the leader of term, may take it: a leader paused
// past its term finds its leases' time run out on its own clock, and a newer
// leader must not commit that verdict for it.
func (s *Server) proposeLeaseChange(term uint64, req *pb.InternalRaftRequest) {
	req.ID = s.ids.next()
	data, _, err := entry.Encode(req)
	if err == nil {
		err = s.node.ProposeAsLeader(req.ID, data, term)
	}
	if err != nil {
		s.logger.Debug("propose lease change", "err", err)
	}
}

// MinLeaseTTL implements api.LeaseBackend: etcd's minimum, one and a half
// election timeouts (counted in whole heartbeats), rounded up to a second.
func (s *Server) MinLeaseTTL() int64 {
	ticks := int64(s.cfg.ElectionTimeout / s.cfg.HeartbeatInterval)
	minTTL := time.Duration(3*ticks/2) * s.cfg.HeartbeatInterval
	return int64(math.Ceil(minTTL.Seconds()))
}

// NewLeaseID implements api.LeaseBackend.
func (s *Server) NewLeaseID() int64 { return int64(s.ids.next() & math.MaxInt64) }

// Stopping implements api.LeaseBackend.
func (s *Server) Stopping() <-chan struct{} { return s.stopping }

// LeaseIDs implements api.LeaseBackend.
func (s *Server) LeaseIDs() []int64 { return s.leases().IDs() }

// LeaseRenew restarts a lease's TTL and returns the TTL it was granted
// (lease.ErrNotFound for a lease that is gone or expired): on the leader, in
// memory; on a follower, forwarded to the leader, waiting for one if need be.
func (s *Server) LeaseRenew(ctx context.Context, id int64) (int64, error) {
	if ttl, ok := s.LeaseRenewHere(id); ok {
		return ttl, nil
	}
	// No context with a timeout: a follower renews thousands of leases a
	// second, and a context each (a timer, a child in the keep-alive
	// stream's context) took 7% of its CPU. The forwarder fails a renewal
	// the leader did not answer in time (sweepTimeouts), and retries stop
	// at the deadline.
	deadline := time.Now().Add(s.requestTimeout())
	var ttl int64
	err := s.onLeader(ctx, deadline, func() (err error) {
		ttl, err = s.leases().Renew(id)
		return err
	}, func() (err error) {
		ttl, err = s.forwarder.renew(ctx, id)
		return err
	})
	return ttl, err
}

// LeaseRenewLater implements api.LeaseBackend. A follower with a stream to
// the leader queues the renewal on it, and the stream's receive loop answers:
// no goroutine waits for it. Anything else, and a renewal lost with the
// stream (the leader changed), goes to LeaseRenew on a goroutine of its own,
// which waits for a leader and tries again.
func (s *Server) LeaseRenewLater(ctx context.Context, id int64, done func(ttl int64, err error)) {
	slow := func() { done(s.LeaseRenew(ctx, id)) }
	queued := s.forwarder.renewLater(id, func(ttl int64, err error) {
		if errors.Is(err, errLinkBroken) {
			go slow()
			return
		}
		done(ttl, err)
	})
	if !queued {
		go slow()
	}
}

// LeaseRenewHere implements api.LeaseBackend: a renewal this member, as the
// primary lessor, answers at once. Anything else (a follower, a lease not
// found here yet) is LeaseRenewLater's to answer.
func (s *Server) LeaseRenewHere(id int64) (int64, bool) {
	s.syncLeadership()
	ttl, err := s.leases().Renew(id)
	return ttl, err == nil
}

// LeaseTimeToLive implements api.LeaseBackend: the leader's remaining TTL,
// asked of the leader when this member is not.
func (s *Server) LeaseTimeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	// The answer covers everything committed before the question: a write
	// answered by another member (a delete that detached a key, a revoke)
	// may be committed and not yet applied here. The leader, which
	// answers, waits for it here too, when a follower forwards the question.
	if err := s.node.ReadIndex(ctx); err != nil {
		return nil, err
	}
	var (
		left      time.Duration
		granted   int64
		forwarded *pb.LeaseTimeToLiveResponse
	)
	deadline, _ := ctx.Deadline()
	err := s.onLeader(ctx, deadline, func() (err error) {
		left, granted, err = s.leases().Remaining(req.ID)
		return err
	}, func() (err error) {
		forwarded, err = s.forwarder.timeToLive(ctx, req)
		return err
	})
	if err != nil || forwarded != nil {
		return forwarded, err
	}
	resp := &pb.LeaseTimeToLiveResponse{Header: &pb.ResponseHeader{}, ID: req.ID, TTL: int64(max(left, 0).Seconds()), GrantedTTL: granted}
	if req.Keys {
		keys, err := s.leases().Keys(req.ID)
		if err != nil {
			return nil, err
		}
		resp.Keys = keys
	}
	return resp, nil
}

// onLeader runs local when this member keeps the leases' time, and remote,
// which asks the leader, when it does not. While there is no leader to ask,
// or the way to it broke (the leader changed or stopped), it tries again,
// locally first, until ctx ends or the deadline (if not zero) passes.
func (s *Server) onLeader(ctx context.Context, deadline time.Time, local, remote func() error) error {
	for {
		err := s.onPrimary(ctx, local)
		if !errors.Is(err, lease.ErrNotPrimary) {
			return err
		}
		err = remote()
		if !errors.Is(err, errLinkBroken) && !errors.Is(err, api.ErrNoLeader) {
			return err
		}
		if !deadline.IsZero() && time.Until(deadline) < s.cfg.HeartbeatInterval {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(s.cfg.HeartbeatInterval):
		}
	}
}

// onPrimary runs fn, a question for the primary lessor, after making sure
// this member is the primary if it leads. A lease fn does not find is looked
// for again once this member has applied everything committed: its grant
// may be committed but not yet applied here.
func (s *Server) onPrimary(ctx context.Context, fn func() error) error {
	s.syncLeadership()
	err := fn()
	if errors.Is(err, lease.ErrNotFound) {
		if rerr := s.node.ReadIndex(ctx); rerr != nil {
			return rerr
		}
		err = fn()
	}
	return err
}
