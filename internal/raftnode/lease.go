package raftnode

import (
	"bytes"
	"context"
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

	// untilNanos is until as nanoseconds since base, when the lease may
	// be used; 0 when it may not. Read by ReadIndex on callers'
	// goroutines.
	untilNanos atomic.Int64
	// wanted is set when a read used a lease that is more than half
	// spent: the raft loop then asks a round to extend it.
	wanted atomic.Bool
}

// init sets the lease up for a member with the given timing; with on false,
// or an election timeout too short to leave any, it never holds.
func (l *readLease) init(on bool, tick time.Duration, electionTicks int) {
	l.base = time.Now()
	if on && electionTicks > 3 {
		d := time.Duration(electionTicks-2) * tick
		l.duration = d - d/leaseClockMargin
	}
}

// leaseReadIndex returns the index a linearizable read must wait for when
// the lease answers it, and whether it does. The commit index is read before
// the lease: at that moment this member led and no other could have been
// elected, so every write acknowledged by then, here or at a follower, is at
// or below the commit index it had sent (sentCommit).
func (n *Node) leaseReadIndex() (uint64, bool) {
	index := n.sentCommit.Load()
	until := n.lease.untilNanos.Load()
	if until == 0 {
		return 0, false
	}
	now := int64(time.Since(n.lease.base))
	if now >= until {
		return 0, false
	}
	if until-now < int64(n.lease.duration/2) && !n.lease.wanted.Load() {
		n.lease.wanted.Store(true)
	}
	return index, true
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
	until := r.leaseFrom.Add(l.duration)
	if l.term != term || until.After(l.until) {
		l.term, l.until = term, until
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
