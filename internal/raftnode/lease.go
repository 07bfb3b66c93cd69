package raftnode

import (
	"bytes"
	"context"
	"slices"
	"sync/atomic"
	"time"

	raftpb "go.etcd.io/raft/v3/raftpb"
)

// The read lease: a leader that a quorum confirmed recently answers
// linearizable reads with its commit index at once, without a read index
// round, for a while after the round.
//
// Why no other leader can exist meanwhile. PreVote and CheckQuorum are on, so
// a follower that heard from its leader fewer than ElectionTicks ticks ago
// neither grants a (pre-)vote to anyone else nor campaigns itself (etcd raft's
// "in lease" rule), and a member cannot raise its term without a quorum of
// pre-votes. A read index round that a quorum acknowledged, asked at time S,
// reached each member of that quorum after S; each then refuses votes for
// ElectionTicks of its own ticks. A ticker delivers at most x/tick + 2 ticks
// in any span x (one may be waiting in its channel), so no quorum can elect
// another leader before S + (ElectionTicks-2) ticks: every quorum shares a
// member with the one that acknowledged. The lease ends sooner than that by
// leaseClockMargin, for members' clocks that do not run at quite the same
// rate. What would break the rule, and what is done about it:
//
//   - A member that restarts forgets its leader, and Raft lets it vote at
//     once. Every member refuses (drops) votes and pre-votes for
//     ElectionTicks ticks after it starts (dropVoteAtStart), which a
//     restarted cluster pays once, as one more election timeout at most.
//   - A leadership transfer makes its target campaign at once, and voters
//     let it through the rule. A leader that sends MsgTimeoutNow holds no
//     lease for the rest of its term.
//   - A configuration change moves the quorums. Each change revokes the
//     lease, and only rounds asked after it count: a quorum of one
//     configuration meets every quorum of the next (Raft changes one voter,
//     or goes through a joint configuration, at a time), and the leader
//     applies each change before it can propose another.
//   - A leader that steps down revokes its lease before it sends anything
//     of its new state (a vote, say), so a read that found the lease held
//     found it while no other leader could have been elected.
//   - A leader sends a new commit index before it persists the Ready that
//     holds it, and a follower may apply a write and acknowledge it
//     meanwhile: the lease answers with the commit index as sent
//     (sentCommit), not as persisted.
//
// Each member tells its peers its vote hold (VoteHold: its election timeout
// less two ticks, the least time it refuses votes for), and the lease lasts
// no longer than the shortest of the voters' holds: a member run with a
// shorter election timeout than the leader's shortens the lease, and one
// whose hold is unknown (it has not connected since this member started)
// withholds it.
//
// The lease counts time on the leader's monotonic clock: a process paused
// (SIGSTOP, a long GC) wakes to a clock past its lease. A machine whose
// monotonic clock stops while the others' runs on (a virtual machine frozen
// by its host, on some clock sources) would break it; Config.ReadLease turns
// it off for such places.

// leaseClockMargin is the share of the lease given up to clock rate
// differences between members: a tenth.
const leaseClockMargin = 10

// campaignTransfer is the context etcd raft gives the votes of a campaign
// that a leadership transfer started; voters grant them regardless of their
// leader, so the startup window lets them through too.
var campaignTransfer = []byte("CampaignTransfer")

// readLease is the leader's read lease. The raft loop owns the fields but
// the published ones.
type readLease struct {
	duration time.Duration // 0: no lease (off, or too few election ticks)
	base     time.Time     // the clock published times count from

	term       uint64    // the term of the lease held (until)
	until      time.Time // the lease ends then; zero when none is held
	changedAt  time.Time // the last configuration change: rounds asked before it do not count
	noLeaseFor uint64    // a transfer was started in this term: no lease until the next
	voters     []uint64  // the other voters, incoming and outgoing, whose holds bound the lease

	// untilNanos is until as nanoseconds since base, when the lease may
	// be used; 0 when it may not. Read by ReadIndex on callers'
	// goroutines.
	untilNanos atomic.Int64
	// wanted is set when a read used a lease that is more than half
	// spent: the raft loop then asks a round to extend it.
	wanted atomic.Bool
	// halfSpan is half the span of the lease last extended, in
	// nanoseconds: when it is more than half spent.
	halfSpan atomic.Int64
}

// VoteHold is how long a member ticking every tick, with an election timeout
// of electionTicks, refuses to vote for another leader at least, once it
// heard from its own: a ticker delivers up to two ticks early.
func VoteHold(tick time.Duration, electionTicks int) time.Duration {
	return time.Duration(max(electionTicks-2, 0)) * tick
}

// leaseWithin is the part of a vote hold a lease may use.
func leaseWithin(hold time.Duration) time.Duration { return hold - hold/leaseClockMargin }

// init sets the lease up for a member with the given timing; with on false,
// or an election timeout too short to leave any, it never holds.
func (l *readLease) init(on bool, tick time.Duration, electionTicks int) {
	l.base = time.Now()
	if on && electionTicks > 3 {
		l.duration = leaseWithin(VoteHold(tick, electionTicks))
	}
}

// setVoters records the voters of cs other than self.
func (l *readLease) setVoters(cs *raftpb.ConfState, self uint64) {
	l.voters = l.voters[:0]
	for _, ids := range [][]uint64{cs.GetVoters(), cs.GetVotersOutgoing()} {
		for _, id := range ids {
			if id != self && !slices.Contains(l.voters, id) {
				l.voters = append(l.voters, id)
			}
		}
	}
}

// leaseSpan returns how long a lease may last from a round's start: this
// member's own span, or less when a voter holds votes back for less; false
// when a voter's hold is unknown.
func (n *Node) leaseSpan() (time.Duration, bool) {
	d := n.lease.duration
	if n.cfg.PeerVoteHold == nil {
		return d, true
	}
	for _, id := range n.lease.voters {
		hold, ok := n.cfg.PeerVoteHold(id)
		if !ok {
			return 0, false
		}
		d = min(d, leaseWithin(hold))
	}
	return d, true
}

// leaseReadIndex returns the index a linearizable read must wait for when
// the lease answers it, how long the lease has left, and whether it does. The
// commit index is read before the lease: at that moment this member led and
// no other could have been elected, so every write acknowledged by then, here
// or at a follower, is at or below the commit index it had sent (sentCommit).
func (n *Node) leaseReadIndex() (index uint64, left time.Duration, ok bool) {
	index = n.sentCommit.Load()
	until := n.lease.untilNanos.Load()
	if until == 0 {
		return 0, 0, false
	}
	left = time.Duration(until) - time.Since(n.lease.base)
	if left <= 0 {
		return 0, 0, false
	}
	return index, left, true
}

// leaseUsed notes that the lease, with left to run, answered reads: one more
// than half spent is then wanted renewed (leaseRenewalDue).
func (n *Node) leaseUsed(left time.Duration) {
	if int64(left) < n.lease.halfSpan.Load() && !n.lease.wanted.Load() {
		n.lease.wanted.Store(true)
	}
}

// waitApplied returns once the state machine has applied index.
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	if n.appliedIdx.Load() >= index {
		return nil
	}
	errC := make(chan error, 1)
	n.reads.add(index, []chan error{errC}, n.appliedIdx.Load())
	select {
	case err := <-errC:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopC:
		return ErrStopped
	}
}

// extendLease extends the lease after round r was answered: a quorum
// confirmed this member's leadership after r was first asked.
func (n *Node) extendLease(r *readRound) {
	l := &n.lease
	term := n.term.Load()
	if l.duration == 0 || !n.leading || n.soleVoter || r.leaseFrom.IsZero() ||
		r.leaseTerm != term || l.noLeaseFor == term || r.leaseFrom.Before(l.changedAt) {
		return
	}
	span, ok := n.leaseSpan()
	if !ok || span <= 0 {
		return
	}
	until := r.leaseFrom.Add(span)
	if l.term != term || until.After(l.until) {
		l.term, l.until = term, until
		l.halfSpan.Store(int64(span / 2))
	}
	n.publishLease()
}

// publishLease makes the lease usable by ReadIndex when this member leads in
// the lease's term and has committed an entry of it (every earlier entry is
// then below its commit index), or withdraws it.
func (n *Node) publishLease() {
	l := &n.lease
	term := n.term.Load()
	if l.until.IsZero() || !n.leading || n.termStart == 0 || l.term != term || l.noLeaseFor == term {
		l.untilNanos.Store(0)
		return
	}
	l.untilNanos.Store(max(int64(l.until.Sub(l.base)), 1))
}

// revokeLease withdraws the lease at once.
func (n *Node) revokeLease() {
	n.lease.until = time.Time{}
	n.lease.untilNanos.Store(0)
}

// leaseConfChanged revokes the lease before a configuration change takes
// effect; rounds asked before now no longer count.
func (n *Node) leaseConfChanged() {
	n.revokeLease()
	n.lease.changedAt = time.Now()
}

// noLeaseForTransfer revokes the lease when msgs, about to be sent by the
// leader, tell a follower to campaign at once: until the next term, another
// leader may be elected at any moment.
func (n *Node) noLeaseForTransfer(msgs []*raftpb.Message) {
	for _, m := range msgs {
		if m.GetType() == raftpb.MessageType_MsgTimeoutNow {
			n.lease.noLeaseFor = n.term.Load()
			n.revokeLease()
			return
		}
	}
}

// leaseRenewalDue reports, while the lease holds, whether the raft loop
// should ask a round only to extend it: reads found it more than half spent.
func (n *Node) leaseRenewalDue() bool { return n.lease.wanted.Swap(false) }

// dropVoteAtStart reports whether m, a vote or pre-vote request, comes within
// ElectionTicks ticks of this member's start, when it must not be granted:
// this member may have acknowledged a leader's lease just before it
// restarted, and Raft, having forgotten that leader, would grant it.
func (n *Node) dropVoteAtStart(m *raftpb.Message) bool {
	return n.ticks.Load() < uint64(n.cfg.ElectionTicks) && !bytes.Equal(m.GetContext(), campaignTransfer)
}
