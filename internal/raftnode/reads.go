package raftnode

import (
	"context"
	"encoding/binary"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	raftpb "go.etcd.io/raft/v3/raftpb"
)

// Linearizable reads. A read waits for a read index round: Raft's leader
// confirms with a quorum that it still leads and names its commit index; the
// read is served once the local state machine has applied that far. Rounds
// run one at a time per member, shared by every read that arrived during the
// previous one; a leader folds its followers' requests into its own rounds.

// readRetryTicks is how many ticks a read index round waits for its answer
// before it asks again: Raft drops a read index request silently when the
// message to the leader is lost, or the leader cannot serve it yet.
const readRetryTicks = 5

// ReadIndex returns once the local state machine holds every entry whose
// write could have been acknowledged when it was called: a read served after
// it is linearizable. Concurrent calls share one Raft read index round. A
// sole voter that leads skips the round: every acknowledged write has been
// applied here, and entries still being applied were not acknowledged yet.
func (n *Node) ReadIndex(ctx context.Context) error {
	if from := n.localReadFrom.Load(); from != 0 && n.appliedIdx.Load() >= from {
		return nil
	}
	if index, left, ok := n.leaseReadIndex(); ok {
		n.leaseUsed(left)
		return n.waitApplied(ctx, index)
	}
	select {
	case <-n.stopC:
		return ErrStopped
	default:
	}
	errC := make(chan error, 1)
	if !n.readQueue.push(errC) {
		return ErrTooManyRequests
	}
	select {
	case err := <-errC:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// answerRemoteReads sends followers the read index of the round their
// requests shared. A follower waits until it has applied that far, as with
// an answer from Raft.
func (n *Node) answerRemoteReads(reqs []*raftpb.Message, index uint64) {
	if len(reqs) == 0 {
		return
	}
	term := n.term.Load()
	out := make([]*raftpb.Message, len(reqs))
	for i, req := range reqs {
		from, to, idx := n.cfg.ID, req.GetFrom(), index
		out[i] = &raftpb.Message{
			Type: raftpb.MessageType_MsgReadIndexResp.Enum(), From: &from, To: &to,
			Term: &term, Index: &idx, Entries: req.GetEntries(),
		}
	}
	n.send(out)
}

// startReadRound starts a read index round for the queued reads, unless one is
// in flight already: then they wait for it to end and share the next one, as
// etcd's reads do. Every round costs the leader a heartbeat to each follower
// and (on a follower) a round trip to the leader, so under load a round
// shared by every read that arrived during the previous one is what keeps
// linearizable reads cheap.
//
// A round starts leader or not: one that Raft drops for want of a leader is
// asked again, and fails after the read timeout, so that a member cut off
// from the leader answers with an error instead of never.
func (n *Node) startReadRound(inflight map[uint64]*readRound, spare []chan error, seq *uint64, now uint64) []chan error {
	if index, left, ok := n.leaseReadIndex(); ok {
		// The lease answers whatever waits, and a round only
		// extends it (when reads use it: not this loop's own look).
		reads := n.readQueue.drain(spare)
		if len(reads) > 0 || len(n.remoteReads) > 0 {
			n.leaseUsed(left)
		}
		if len(reads) > 0 {
			n.reads.add(index, append([]chan error(nil), reads...), n.appliedIdx.Load())
		}
		n.answerRemoteReads(n.remoteReads, index)
		n.remoteReads = nil
		if len(inflight) == 0 && n.leaseRenewalDue() {
			n.newReadRound(inflight, seq, &readRound{started: now}, now)
		}
		return reads
	}
	if len(inflight) > 0 {
		return spare
	}
	reads := n.readQueue.drain(spare)
	if len(reads) == 0 && len(n.remoteReads) == 0 {
		return reads
	}
	n.newReadRound(inflight, seq, &readRound{waiters: append([]chan error(nil), reads...), remote: n.remoteReads, started: now}, now)
	n.remoteReads = nil
	return reads
}

// newReadRound numbers round r, counts it in flight, and asks it.
func (n *Node) newReadRound(inflight map[uint64]*readRound, seq *uint64, r *readRound, now uint64) {
	*seq++
	r.ctx = n.readContext(*seq)
	inflight[*seq] = r
	n.readRounds.Add(1)
	n.askRead(r, now)
}

// ReadIndexRounds returns how many read index rounds this member has started.
func (n *Node) ReadIndexRounds() uint64 { return n.readRounds.Load() }

// readRound is one read index request and the reads that share it.
type readRound struct {
	ctx     []byte
	waiters []chan error
	// remote are followers' read index requests that this leader answers
	// with the round's index (see step).
	remote  []*raftpb.Message
	started uint64 // tick it was queued at
	asked   uint64 // tick it was last asked at
	// leaseFrom is when this member, leading in term leaseTerm, first
	// asked it: a quorum that answers it acknowledged the leader after
	// then, which is where the read lease it extends starts.
	leaseFrom time.Time
	leaseTerm uint64
	// leader is the leader it was last asked under; 0 while it was never
	// asked (no leader was known).
	leader uint64
}

// readContext is the request context of read index round seq: the process's
// nonce, then seq.
func (n *Node) readContext(seq uint64) []byte {
	ctx := make([]byte, 16)
	copy(ctx, n.readNonce[:])
	binary.BigEndian.PutUint64(ctx[8:], seq)
	return ctx
}

// roundOf returns the round a read index request context names, and whether
// this process asked it: an answer to a request of an earlier run of the
// member (its sequence numbers started again at 1) is not.
func (n *Node) roundOf(ctx []byte) (seq uint64, mine bool) {
	if len(ctx) != 16 || [8]byte(ctx[:8]) != n.readNonce {
		return 0, false
	}
	return binary.BigEndian.Uint64(ctx[8:]), true
}

// retryReads asks again for the rounds that waited readRetryTicks without an
// answer, and fails those older than the read timeout.
func (n *Node) retryReads(inflight map[uint64]*readRound, now, timeoutTicks uint64) {
	for seq, r := range inflight {
		switch {
		case now-r.started >= timeoutTicks:
			delete(inflight, seq)
			r.fail(ErrReadTimeout)
			n.metrics.slowReads.Inc()
		case r.leader == raft.None || now-r.asked >= readRetryTicks:
			n.askRead(r, now)
		}
	}
}

// askRead asks Raft for the read index of round r, if a leader is known.
func (n *Node) askRead(r *readRound, now uint64) {
	if lead := n.lead.Load(); lead != raft.None {
		r.asked, r.leader = now, lead
		if n.leading && r.leaseFrom.IsZero() {
			r.leaseFrom, r.leaseTerm = time.Now(), n.term.Load()
		}
		n.rn.ReadIndex(r.ctx)
	}
}

// fail answers every read that shares round r with err. Followers' requests
// in it get no answer: they ask again.
func (r *readRound) fail(err error) {
	for _, w := range r.waiters {
		w <- err
	}
}

// failAskedReads fails the rounds that were asked of a leader, and returns
// how many.
func failAskedReads(inflight map[uint64]*readRound, err error) int {
	failed := 0
	for seq, r := range inflight {
		if r.leader != raft.None {
			r.fail(err)
			delete(inflight, seq)
			failed++
		}
	}
	return failed
}

// failReads fails every round.
func failReads(inflight map[uint64]*readRound, err error) {
	for seq, r := range inflight {
		r.fail(err)
		delete(inflight, seq)
	}
}

// readWaits holds read requests whose read index is known, until the apply
// loop reaches it.
type readWaits struct {
	mu        sync.Mutex // guards the fields below; never held while blocking
	appliedTo uint64
	waiting   []readWait // in arrival order; indexes are nondecreasing
}

type readWait struct {
	index   uint64
	waiters []chan error
}

func (r *readWaits) add(index uint64, waiters []chan error, applied uint64) {
	r.mu.Lock()
	if applied > r.appliedTo {
		r.appliedTo = applied
	}
	if index <= r.appliedTo {
		r.mu.Unlock()
		for _, w := range waiters {
			w <- nil
		}
		return
	}
	r.waiting = append(r.waiting, readWait{index: index, waiters: waiters})
	r.mu.Unlock()
}

func (r *readWaits) advance(index uint64) {
	r.mu.Lock()
	r.appliedTo = index
	var ready []readWait
	keep := r.waiting[:0]
	for _, w := range r.waiting {
		if w.index <= index {
			ready = append(ready, w)
		} else {
			keep = append(keep, w)
		}
	}
	r.waiting = keep
	r.mu.Unlock()
	for _, w := range ready {
		for _, c := range w.waiters {
			c <- nil
		}
	}
}

func (r *readWaits) failAll(err error) {
	r.mu.Lock()
	waiting := r.waiting
	r.waiting = nil
	r.mu.Unlock()
	for _, w := range waiting {
		for _, c := range w.waiters {
			c <- err
		}
	}
}
