// Package raftnode owns plinth's raft.RawNode. One goroutine, the raft loop,
// is the only code that touches the RawNode: it ticks it, feeds it proposals
// and read requests, persists what each Ready asks (entries and hard state in
// one synced Pebble batch), and hands committed entries to a second goroutine,
// the apply loop, which applies them to the state machine. Splitting the two
// lets the next batch of entries reach the disk while the previous one is
// applied.
//
// Everything else talks to the node through its methods, which pass typed
// messages to the loops. The raft loop never blocks on a client or a peer:
// proposals and received messages wait in bounded queues, proposals only
// while a leader is known, and messages to peers go to a Transport that
// never blocks.
package raftnode

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/entry"
	"github.com/plinthdb/plinth/internal/snapshot"
	"github.com/plinthdb/plinth/internal/storage"
)

// Errors returned to callers waiting on the node.
var (
	ErrStopped       = errors.New("raftnode: stopped")
	ErrLeaderChanged = errors.New("raftnode: leader changed")
	// ErrNotLeader drops a leader-only proposal (ProposeAsLeader) of a
	// member that no longer leads in its term.
	ErrNotLeader = errors.New("raftnode: not the leader of the proposal's term")
	ErrDropped   = errors.New("raftnode: proposal dropped")
	// ErrTooManyRequests is returned when requests queue faster than Raft
	// takes them.
	ErrTooManyRequests = errors.New("raftnode: too many requests")
	// ErrProposalExpired fails a proposal that waited for a leader for
	// longer than Config.ReadTimeout.
	ErrProposalExpired = errors.New("raftnode: proposal waited too long for a leader")
	// ErrReadTimeout fails a linearizable read whose read index round
	// did not complete within Config.ReadTimeout, however often it was
	// retried.
	ErrReadTimeout = errors.New("raftnode: read index timed out")
)

// Transport carries messages to the other members. Send must not block.
type Transport interface {
	Send(msgs []*raftpb.Message)
}

// StateMachine receives committed entries, in order, on the apply loop. cs is
// the configuration after them when they changed it, nil otherwise. An error
// stops the node: the state could not be written.
type StateMachine interface {
	Apply(ents []*raftpb.Entry, cs *raftpb.ConfState) error
	// Install replaces the state with a snapshot's image (see package
	// snapshot) and reloads what it keeps in memory.
	Install(img snapshot.Image) error
}

// Config configures a Node.
type Config struct {
	ID uint64
	// Peers are the initial voters, this member included, with the
	// context of the configuration change that adds each; used only to
	// bootstrap an empty log. Every member of a new cluster must give the
	// same peers in the same order: the entries must be identical.
	Peers         []raft.Peer
	TickInterval  time.Duration // the heartbeat interval
	ElectionTicks int           // election timeout, in ticks
	// Transport sends messages to the other members; nil for a member
	// that has none.
	Transport Transport
	// OnConfChange, when not nil, is called on the raft loop with each
	// configuration change as it takes effect in Raft (committed, before it
	// is applied). It must not block.
	OnConfChange func(cc *raftpb.ConfChangeV2)
	// ReadTimeout fails a read index round that did not complete in time
	// (ErrReadTimeout), and a proposal that waited that long for a leader
	// (ErrProposalExpired); 0 means 5s.
	ReadTimeout time.Duration
	// SnapshotDir is where snapshots received from the leader are stored
	// until they are installed; "" for a member that takes none. It is on
	// FS, the database's file system (nil: the operating system's).
	SnapshotDir string
	FS          vfs.FS
	Applied     uint64 // index of the last entry the state machine holds
	// LogRetention is how many applied entries the log keeps for followers
	// that fall behind; the log is truncated behind it every LogRetention
	// entries.
	LogRetention uint64
	// OnDropped is told of each proposal that Raft refused (no leader, or
	// too much uncommitted data), so its proposer stops waiting.
	OnDropped func(id uint64, err error)
	Logger    *slog.Logger
	// SyncPacer, when not nil, is the pacer of the WAL the log is written
	// to: the raft loop asks it to hold the next sync back while it is
	// under load (see syncHoldFor).
	SyncPacer *storage.SyncPacer
	// ReadLease lets a leader answer linearizable reads without a read
	// index round while a recent round's quorum guarantees that no other
	// leader can have been elected (see lease.go). Members refuse votes
	// for an election timeout after they start whether it is on or not,
	// so that any member's lease can be trusted.
	ReadLease bool
	// PeerVoteHold returns how long member id refuses to vote for another
	// leader after hearing from its own (its VoteHold), as the member last
	// said, and whether it is known. The lease lasts no longer than the
	// shortest of the voters', and not at all while one is unknown. Nil:
	// every member's is this member's.
	PeerVoteHold func(id uint64) (time.Duration, bool)
}

// Queue bounds: beyond them, requests fail with ErrTooManyRequests.
const (
	maxQueuedProposals = 1 << 14
	maxQueuedReads     = 1 << 14
	maxQueuedMessages  = 1 << 13
)

// Group commit. A Ready that persists at least loadedBatch entries shows many
// proposals in flight; the WAL then holds its next sync back, so that the
// next Ready's sync covers more entries. A member with peers holds
// clusterSyncHold: under the benchmark's put load (1000 clients) that took
// syncs from one per ~30 puts to one per ~46 and server CPU per put down
// 5-15%; longer holds there gained nothing and raised p99, as a follower's
// hold delays the acknowledgement a commit waits for. A sole voter's sync
// alone commits its entries, and its hold grows with the Ready:
// syncHoldPerEntry for each entry (1 ms for loadedBatch) up to maxSyncHold.
// A Ready of n entries means at least n requests in flight whose answers
// already wait for each other's; a larger one costs fewer syncs, and lets the
// apply loop answer more requests at once, which gRPC writes to each client
// connection together: under the same load that took syncs to one per ~100
// puts and server CPU per put down another 1-7%, with more requests/s and
// p50 no higher at 100 clients (docs/performance.md). A client that waits for
// each answer before sending the next put makes Readies of one entry, and
// never waits for a hold.
const (
	loadedBatch      = 32
	clusterSyncHold  = 500 * time.Microsecond
	syncHoldPerEntry = 32 * time.Microsecond
	maxSyncHold      = 4 * time.Millisecond
)

// syncHoldFor is the hold after persisting a Ready of n entries; soleVoter
// says that this member's sync alone commits them.
func syncHoldFor(n int, soleVoter bool) time.Duration {
	switch {
	case n < loadedBatch:
		return 0
	case !soleVoter:
		return clusterSyncHold
	}
	return min(time.Duration(n)*syncHoldPerEntry, maxSyncHold)
}

type proposal struct {
	id         uint64
	data       []byte
	confChange bool   // data is a raftpb.ConfChange
	queuedAt   uint64 // the raft loop's tick count when it was queued
	// leaderTerm, when not 0, makes the proposal the leader's of that term
	// only (ProposeAsLeader): never forwarded to another member.
	leaderTerm uint64
}

// applyTask is work for the apply loop: committed entries, or a snapshot to
// install (image, with done told the outcome).
type applyTask struct {
	ents  []*raftpb.Entry
	cs    *raftpb.ConfState
	image *snapshot.Image
	done  chan error
}

// Node runs a Raft member.
type Node struct {
	cfg Config
	db  *pebble.DB
	log *storage.LogStore
	sm  StateMachine
	rn  *raft.RawNode // owned by the raft loop

	proposalQueue *inbox[proposal]
	readQueue     *inbox[chan error]             // read requests waiting for a read index round
	recvQueue     *inbox[*raftpb.Message]        // from peers, and reports about them
	ctrlQueue     *inbox[func(rn *raft.RawNode)] // rare operations, run on the raft loop
	applyQ        *applyQueue
	stopC         chan struct{}
	wg            sync.WaitGroup

	failOnce sync.Once
	failErr  error
	failedC  chan struct{} // closed when a loop failed; failErr says why

	term      atomic.Uint64
	lead      atomic.Uint64
	commitIdx atomic.Uint64 // as persisted
	// sentCommit is the commit index this member, leading, may have told
	// its followers: stored before it sends it. A follower applies a
	// committed write, and acknowledges it, while the leader still
	// persists the Ready that carried the news; a lease read takes its
	// index from here, never from commitIdx, so that it cannot miss one.
	sentCommit atomic.Uint64
	appliedIdx atomic.Uint64
	lastIdx    atomic.Uint64 // the log's last entry, persisted

	reads      readWaits
	readRounds atomic.Uint64 // read index rounds started
	// readNonce starts every read index request context: random per
	// process, so that an answer meant for an earlier run of this member
	// (delayed in the network) never matches a request of this one.
	readNonce [8]byte

	// Local reads: a leader that is the only voter needs no read index
	// round. No other member can be elected without its vote, and every
	// write acknowledged to a client has been applied here, so once the
	// first entry of its term is applied (which puts every earlier
	// entry in the state machine) its state is linearizable as it is.
	// A voter that a configuration change removed may have applied and
	// acknowledged writes before it that are not applied here yet: local
	// reads wait for that change to be applied too (soleSince).
	soleVoter     bool          // raft loop only: the configuration is just this member
	soleSince     uint64        // raft loop only: the configuration entry that made it so; 0 if none
	termStart     uint64        // raft loop only: first committed entry of this leader's term; 0 if not leader or unknown
	localReadFrom atomic.Uint64 // where local reads are safe from (the later of the two), else 0

	lease readLease

	progress atomic.Pointer[Progress] // the leader's view of its followers; nil when not leader
	activeAt map[uint64]uint64        // raft loop only: tick each member was last seen active

	outgoing      outgoing // snapshots made for followers, until sent
	installed     atomic.Uint64
	ticks         atomic.Uint64        // the raft loop's tick count, for proposals' age
	truncatedTo   uint64               // raft loop only: the log holds no entry at or below it
	steppedImages []string             // raft loop only: images handed to Raft by the last step
	leading       bool                 // raft loop only: this member is the leader
	remoteReads   []*raftpb.Message    // raft loop only: followers' reads for the next round
	heldProps     []*raftpb.Message    // raft loop only: followers' proposals held while Raft would drop them
	heldSince     uint64               // raft loop only: the tick the oldest of heldProps came
	lastHeartbeat map[uint64]time.Time // raft loop only: see observeHeartbeats
	metrics       nodeMetrics
}

// Progress is a leader's view of the members' logs, refreshed every tick.
type Progress struct {
	LastIndex uint64
	Members   map[uint64]MemberProgress
}

// MemberProgress is how far one member's log matches the leader's.
type MemberProgress struct {
	Match     uint64
	IsLearner bool
	// RecentActive: the leader heard from the member within the last
	// election timeout.
	RecentActive bool
}

// New opens the Raft member over the log in log. It does not start it.
func New(cfg Config, db *pebble.DB, log *storage.LogStore, sm StateMachine) (*Node, error) {
	if cfg.LogRetention == 0 {
		cfg.LogRetention = 10000
	}
	rcfg := &raft.Config{
		ID:                        cfg.ID,
		ElectionTick:              cfg.ElectionTicks,
		HeartbeatTick:             1,
		Storage:                   log,
		Applied:                   cfg.Applied,
		MaxSizePerMsg:             1 << 20,
		MaxCommittedSizePerReady:  16 << 20,
		MaxUncommittedEntriesSize: 1 << 30,
		MaxInflightMsgs:           256,
		CheckQuorum:               true,
		PreVote:                   true,
		// A removed leader hands over at once instead of leading a
		// configuration it is not in until it stops.
		StepDownOnRemoval: true,
		Logger:            raftLogger{cfg.Logger},
	}
	rn, err := raft.NewRawNode(rcfg)
	if err != nil {
		return nil, fmt.Errorf("raftnode: %w", err)
	}
	first, err := log.FirstIndex()
	if err != nil {
		return nil, err
	}
	last, err := log.LastIndex()
	if err != nil {
		return nil, err
	}
	// Raft would panic on this; say what is wrong with the data instead.
	if cfg.Applied+1 < first {
		return nil, fmt.Errorf("raftnode: the log starts at entry %d, but the state machine has applied only up to %d: entries it needs are gone", first, cfg.Applied)
	}
	// A member that joins a running cluster has no peers to bootstrap
	// with: the leader sends it the log, or a snapshot.
	if last == 0 && len(cfg.Peers) > 0 {
		if err := rn.Bootstrap(cfg.Peers); err != nil {
			return nil, fmt.Errorf("raftnode: bootstrap: %w", err)
		}
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = 5 * time.Second
	}
	if cfg.FS == nil {
		cfg.FS = vfs.Default
	}
	n := &Node{
		cfg: cfg, db: db, log: log, sm: sm, rn: rn, metrics: newNodeMetrics(), lastHeartbeat: map[uint64]time.Time{},
		proposalQueue: newInbox[proposal](maxQueuedProposals),
		readQueue:     newInbox[chan error](maxQueuedReads),
		recvQueue:     newInbox[*raftpb.Message](maxQueuedMessages),
		ctrlQueue:     newInbox[func(*raft.RawNode)](64),
		applyQ:        newApplyQueue(),
		stopC:         make(chan struct{}),
		failedC:       make(chan struct{}),
	}
	if _, err := rand.Read(n.readNonce[:]); err != nil {
		return nil, fmt.Errorf("raftnode: read nonce: %w", err)
	}
	n.lease.init(cfg.ReadLease, cfg.TickInterval, cfg.ElectionTicks)
	n.appliedIdx.Store(cfg.Applied)
	n.lastIdx.Store(last)
	n.truncatedTo = cfg.Applied
	log.SetSnapshotter(n.makeSnapshot)
	n.soleVoter = isSoleVoter(log.ConfState(), cfg.ID)
	n.lease.setVoters(log.ConfState(), cfg.ID)
	return n, nil
}

// Start runs the raft and apply loops.
func (n *Node) Start() {
	n.wg.Add(2)
	go func() { defer n.wg.Done(); n.raftLoop() }()
	go func() { defer n.wg.Done(); n.applyLoop() }()
}

// Stop stops both loops and waits for them. Waiting callers get ErrStopped.
func (n *Node) Stop() {
	select {
	case <-n.stopC:
	default:
		close(n.stopC)
	}
	n.wg.Wait()
	n.releaseOutgoing()
	n.reads.failAll(ErrStopped)
	for _, r := range n.readQueue.drain(nil) {
		r <- ErrStopped
	}
	for _, p := range n.proposalQueue.drain(nil) {
		n.cfg.OnDropped(p.id, ErrStopped)
	}
}

// Failed is closed when the node stopped on an error; Err tells which.
func (n *Node) Failed() <-chan struct{} { return n.failedC }

// Err returns the error the node failed with, if it did.
func (n *Node) Err() error {
	select {
	case <-n.failedC:
		return n.failErr
	default:
		return nil
	}
}

func (n *Node) fail(err error) {
	n.failOnce.Do(func() {
		n.failErr = err
		n.cfg.Logger.Error("raft member stopped", "err", err)
		close(n.failedC)
	})
}

// Term returns the current Raft term.
func (n *Node) Term() uint64 { return n.term.Load() }

// Leader returns the ID of the known leader, 0 if none.
func (n *Node) Leader() uint64 { return n.lead.Load() }

// CommitIndex returns the highest index known committed.
func (n *Node) CommitIndex() uint64 { return n.commitIdx.Load() }

// AppliedIndex returns the index of the last applied entry.
func (n *Node) AppliedIndex() uint64 { return n.appliedIdx.Load() }

// WritesInFlight reports whether this member's log holds entries not yet
// known committed: writes on their way to the apply loop, whose events will
// follow soon.
func (n *Node) WritesInFlight() bool { return n.lastIdx.Load() > n.commitIdx.Load() }

// Propose queues data for Raft under the caller's id and returns once it is
// queued. The outcome arrives later: through the state machine once the entry
// is applied, or through Config.OnDropped if the leader refuses it.
// When too many proposals wait already, it fails with ErrTooManyRequests:
// backpressure reaches the client instead of memory growing without bound.
func (n *Node) Propose(id uint64, data []byte) error {
	return n.enqueue(proposal{id: id, data: data})
}

// ProposeAsLeader proposes data only if, when Raft takes it, this member
// still leads in term; otherwise it is dropped (OnDropped, ErrNotLeader),
// never forwarded. It is for what a leader decides from its own clock (a
// lease's expiry, its remaining time): a member deposed while it decided,
// paused for instance, must not have a newer leader commit the decision.
func (n *Node) ProposeAsLeader(id uint64, data []byte, term uint64) error {
	return n.enqueue(proposal{id: id, data: data, leaderTerm: term})
}

// enqueue queues p for the raft loop, stamped with the tick it came at.
func (n *Node) enqueue(p proposal) error {
	select {
	case <-n.stopC:
		return ErrStopped
	default:
	}
	p.queuedAt = n.ticks.Load()
	if !n.proposalQueue.push(p) {
		return ErrTooManyRequests
	}
	return nil
}

// Step hands Raft a message from a peer. It never blocks: when messages
// arrive faster than the raft loop takes them, it drops m (Raft resends).
// Messages of the kinds Raft only makes locally are refused.
func (n *Node) Step(m *raftpb.Message) {
	if raft.IsLocalMsg(m.GetType()) {
		return
	}
	n.recvQueue.push(m)
}

// ReportUnreachable tells Raft that a message to member id was lost.
func (n *Node) ReportUnreachable(id uint64) {
	t := raftpb.MessageType_MsgUnreachable
	n.recvQueue.push(&raftpb.Message{Type: &t, From: &id})
}

// ReportSnapshot tells Raft whether the snapshot sent to member id arrived.
func (n *Node) ReportSnapshot(id uint64, ok bool) {
	t := raftpb.MessageType_MsgSnapStatus
	reject := !ok
	n.recvQueue.push(&raftpb.Message{Type: &t, From: &id, Reject: &reject})
}

func (n *Node) raftLoop() {
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	var (
		proposals []proposal
		reads     []chan error
		msgs      []*raftpb.Message
		inflight  = map[uint64]*readRound{}
		readSeq   uint64
		ticks     uint64
	)
	readTimeoutTicks := uint64(n.cfg.ReadTimeout/n.cfg.TickInterval) + 1
	n.maybeCampaign()
	for {
		select {
		case <-n.stopC:
			failReads(inflight, ErrStopped)
			return
		case <-ticker.C:
			ticks++
			n.ticks.Store(ticks)
			n.rn.Tick()
			n.maybeCampaign()
			n.retryReads(inflight, ticks, readTimeoutTicks)
			n.publishProgress(ticks)
		case <-n.proposalQueue.wake:
		case <-n.readQueue.wake:
		case <-n.recvQueue.wake:
		case <-n.ctrlQueue.wake:
		}
		for _, op := range n.ctrlQueue.drain(nil) {
			op(n.rn)
		}
		msgs = n.recvQueue.drain(msgs)
		for _, m := range msgs {
			n.step(m)
		}
		n.releaseHeldProposals(ticks, readTimeoutTicks)
		// Proposals are taken only while a leader is known, as raft's
		// own node does: without one raft would drop them. Until then
		// they wait queued (the server times them out); so they do
		// while this member hands leadership over.
		if n.lead.Load() != raft.None && !n.transferring() && !n.applyQ.full() {
			proposals = n.dropExpired(n.proposalQueue.drain(proposals), ticks, readTimeoutTicks)
			proposals = n.dropDeposed(proposals)
			for batch := proposals; len(batch) > 0; {
				k := min(len(batch), maxEntriesPerProposal)
				n.propose(batch[:k])
				batch = batch[k:]
			}
		}
		reads = n.startReadRound(inflight, reads, &readSeq, ticks)
		for n.rn.HasReady() {
			if err := n.handleReady(inflight); err != nil {
				n.fail(err)
				failReads(inflight, ErrStopped)
				return
			}
		}
		// The answer to the round in flight may have come: the reads
		// that queued meanwhile go now.
		reads = n.startReadRound(inflight, reads, &readSeq, ticks)
		// Rounds queued while no leader was known go as soon as one is.
		if n.lead.Load() != raft.None {
			for _, r := range inflight {
				if r.leader == raft.None {
					n.askRead(r, ticks)
				}
			}
		}
		// A snapshot Raft did not take (it was stale) is not needed.
		for _, path := range n.steppedImages {
			_ = snapshot.Remove(n.cfg.FS, snapshot.Image{Path: path})
		}
		n.steppedImages = n.steppedImages[:0]
		if applied := n.appliedIdx.Load(); applied >= n.truncatedTo+2*n.cfg.LogRetention {
			to := applied - n.cfg.LogRetention
			if err := n.truncate(to); err != nil {
				n.fail(err)
				failReads(inflight, ErrStopped)
				return
			}
			n.truncatedTo = to
		}
	}
}

// publishProgress refreshes the leader's view of its followers for
// Progress. It runs on the raft loop after each tick.
//
// Raft's RecentActive flags are cleared at every quorum check (each election
// timeout) and set again as each follower answers, so one reading can find
// them all cleared: a member counts as active if the flag was seen set within
// the last election timeout, once it has acknowledged an entry.
func (n *Node) publishProgress(now uint64) {
	st := n.rn.Status()
	if st.RaftState != raft.StateLeader {
		n.progress.Store(nil)
		clear(n.activeAt)
		return
	}
	if n.activeAt == nil {
		n.activeAt = map[uint64]uint64{}
	}
	p := &Progress{LastIndex: st.Progress[n.cfg.ID].Match, Members: make(map[uint64]MemberProgress, len(st.Progress))}
	for id, pr := range st.Progress {
		// Raft marks a member it adds as active until its next quorum
		// check; one that never acknowledged an entry is not.
		if (pr.RecentActive && pr.Match > 0) || id == n.cfg.ID {
			n.activeAt[id] = now
		}
		seen, ok := n.activeAt[id]
		active := ok && now-seen <= uint64(n.cfg.ElectionTicks)
		p.Members[id] = MemberProgress{Match: pr.Match, IsLearner: pr.IsLearner, RecentActive: active}
	}
	for id := range n.activeAt {
		if _, ok := st.Progress[id]; !ok {
			delete(n.activeAt, id)
		}
	}
	n.progress.Store(p)
}

// Progress returns the leader's view of the members' logs, as of the last
// tick, or nil if this member is not the leader.
func (n *Node) Progress() *Progress { return n.progress.Load() }

// ProposeConfChange proposes a configuration change under the caller's id, as
// Propose does a request: the outcome arrives through the state machine, or
// through Config.OnDropped.
func (n *Node) ProposeConfChange(id uint64, cc *raftpb.ConfChange) error {
	cc.Id = &id
	data, err := proto.Marshal(cc)
	if err != nil {
		return fmt.Errorf("raftnode: encode conf change: %w", err)
	}
	return n.enqueue(proposal{id: id, data: data, confChange: true})
}

// TransferLeadership asks the leader (this member) to hand leadership to
// member to. It returns at once; Leader tells when it happened.
func (n *Node) TransferLeadership(to uint64) error {
	if !n.ctrlQueue.push(func(rn *raft.RawNode) { rn.TransferLeader(to) }) {
		return ErrTooManyRequests
	}
	return nil
}

// step hands Raft one message from the receive queue.
func (n *Node) step(m *raftpb.Message) {
	switch m.GetType() {
	case raftpb.MessageType_MsgUnreachable:
		n.rn.ReportUnreachable(m.GetFrom())
	case raftpb.MessageType_MsgSnapStatus:
		status := raft.SnapshotFinish
		if m.GetReject() {
			status = raft.SnapshotFailure
		}
		n.rn.ReportSnapshot(m.GetFrom(), status)
	case raftpb.MessageType_MsgVote, raftpb.MessageType_MsgPreVote:
		if n.dropVoteAtStart(m) {
			return // the candidate asks again
		}
		n.stepRaft(m)
	case raftpb.MessageType_MsgReadIndex:
		// A follower's read: a leader answers it from its own next
		// round, shared with its own reads and every other follower's,
		// instead of a round (a heartbeat to every follower) each.
		if n.leading && m.GetFrom() != n.cfg.ID && len(m.GetEntries()) == 1 {
			n.remoteReads = append(n.remoteReads, m)
			return
		}
		n.stepRaft(m)
	case raftpb.MessageType_MsgProp:
		// A leader handing over drops proposals, and so does a member
		// that knows no leader (the old leader, a moment after it
		// stepped down): a follower's would be lost without a word to
		// it, and its client would wait out the request timeout. Held,
		// it goes to whoever leads once one is known and not handing
		// over (releaseHeldProposals).
		if m.GetFrom() != n.cfg.ID && !n.canTakeProposals() {
			if len(n.heldProps) >= maxHeldProposals {
				return // dropped, as Raft would: memory stays bounded
			}
			if len(n.heldProps) == 0 {
				n.heldSince = n.ticks.Load()
			}
			n.heldProps = append(n.heldProps, m)
			return
		}
		n.stepRaft(m)
	default:
		if m.GetType() == raftpb.MessageType_MsgApp && n.applyQ.full() {
			return // the leader resends once the apply loop caught up
		}
		if m.GetType() == raftpb.MessageType_MsgSnap {
			n.steppedImages = append(n.steppedImages, string(m.GetSnapshot().GetData()))
		}
		n.stepRaft(m)
	}
}

// maxHeldProposals bounds the followers' proposal messages held while Raft
// would drop them; each carries up to maxEntriesPerProposal entries.
const maxHeldProposals = 1024

// transferring reports whether this member leads and is handing leadership
// over (Raft drops proposals meanwhile).
func (n *Node) transferring() bool { return handingOver(n.rn.BasicStatus()) }

func handingOver(st raft.BasicStatus) bool {
	return st.RaftState == raft.StateLeader && st.LeadTransferee != raft.None
}

// canTakeProposals reports whether Raft, in its own current view, would take
// a proposal (as leader) or forward it (to a leader it knows) rather than drop
// it.
func (n *Node) canTakeProposals() bool {
	st := n.rn.BasicStatus()
	return st.Lead != raft.None && !handingOver(st)
}

// releaseHeldProposals steps the followers' proposals held while this member
// could not take them (see step) once it can: its Raft takes them as leader,
// or forwards them, from their proposer still, to the leader it now knows
// (transport.relayed). Those held past the request timeout are dropped:
// their proposers have given up.
func (n *Node) releaseHeldProposals(now, timeoutTicks uint64) {
	if len(n.heldProps) == 0 {
		return
	}
	if now-n.heldSince >= timeoutTicks {
		n.heldProps = nil
		return
	}
	if !n.canTakeProposals() {
		return
	}
	for _, m := range n.heldProps {
		n.stepRaft(m)
	}
	n.heldProps = nil
}

func (n *Node) stepRaft(m *raftpb.Message) {
	if err := n.rn.Step(m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
		n.cfg.Logger.Debug("raft refused a message", "type", m.GetType().String(), "from", fmt.Sprintf("%x", m.GetFrom()), "err", err)
	}
}

// dropExpired fails the proposals that waited for a leader longer than the
// request timeout: their proposers were told the request timed out, and a
// write that surfaces long after (when a partition heals) is a surprise no
// client wants.
func (n *Node) dropExpired(ps []proposal, now, timeoutTicks uint64) []proposal {
	kept := ps[:0]
	for _, p := range ps {
		if now-p.queuedAt >= timeoutTicks {
			n.cfg.OnDropped(p.id, ErrProposalExpired)
			continue
		}
		kept = append(kept, p)
	}
	return kept
}

// dropDeposed fails the leader-only proposals (ProposeAsLeader) of a term in
// which this member, in Raft's own view now, does not lead.
func (n *Node) dropDeposed(ps []proposal) []proposal {
	if !slices.ContainsFunc(ps, func(p proposal) bool { return p.leaderTerm != 0 }) {
		return ps // most turns: Raft's status is not needed
	}
	st := n.rn.BasicStatus()
	kept := ps[:0]
	for _, p := range ps {
		if p.leaderTerm != 0 && (st.RaftState != raft.StateLeader || st.GetTerm() != p.leaderTerm) {
			n.cfg.OnDropped(p.id, ErrNotLeader)
			continue
		}
		kept = append(kept, p)
	}
	return kept
}

// maxEntriesPerProposal bounds how many queued proposals go to Raft in one
// message.
const maxEntriesPerProposal = 512

// propose hands ps to Raft as one proposal message: Raft's per-message work
// is paid once for the batch, and the batch is accepted or dropped whole.
func (n *Node) propose(ps []proposal) {
	slab := make([]raftpb.Entry, len(ps)) // one allocation for the batch's entries
	ents := make([]*raftpb.Entry, len(ps))
	for i, p := range ps {
		slab[i].Data = p.data
		if p.confChange {
			slab[i].Type = raftpb.EntryType_EntryConfChange.Enum()
		}
		ents[i] = &slab[i]
	}
	from := n.cfg.ID
	err := n.rn.Step(&raftpb.Message{Type: raftpb.MessageType_MsgProp.Enum(), From: &from, Entries: ents})
	if err != nil {
		for _, p := range ps {
			n.cfg.OnDropped(p.id, fmt.Errorf("%w: %w", ErrDropped, err))
		}
	}
}

// maybeCampaign starts an election at once when this member is the only
// voter: there is nobody to wait for.
func (n *Node) maybeCampaign() {
	st := n.rn.BasicStatus()
	if st.RaftState == raft.StateLeader {
		return
	}
	if n.soleVoter {
		_ = n.rn.Campaign()
	}
}

func isSoleVoter(cs *raftpb.ConfState, id uint64) bool {
	return len(cs.GetVoters()) == 1 && cs.GetVoters()[0] == id && len(cs.GetVotersOutgoing()) == 0
}

// publishLocalReads decides whether ReadIndex may skip the read index round.
func (n *Node) publishLocalReads() {
	if n.soleVoter && n.termStart != 0 && n.lead.Load() == n.cfg.ID {
		n.localReadFrom.Store(max(n.termStart, n.soleSince))
		return
	}
	n.localReadFrom.Store(0)
}

func (n *Node) handleReady(inflight map[uint64]*readRound) error {
	rd := n.rn.Ready()
	// A leader sends before it persists: its followers write the entries
	// while it does (Raft thesis, 10.2.1). Any other member sends after:
	// its votes and acknowledgements must not get ahead of its disk.
	leading := n.lead.Load() == n.cfg.ID
	if rd.SoftState != nil {
		leading = rd.SoftState.RaftState == raft.StateLeader
	}
	if leading {
		if !n.leading {
			clear(n.lastHeartbeat) // a new time as leader
		}
		n.noLeaseForTransfer(rd.Messages)
		if rd.HardState != nil {
			n.sentCommit.Store(rd.HardState.GetCommit())
		}
		n.observeHeartbeats(rd.Messages)
		n.send(coalesce(rd.Messages))
	} else {
		// Before anything of the new state (a vote, say) is sent.
		n.revokeLease()
	}
	if rd.SoftState != nil {
		n.leading = rd.SoftState.RaftState == raft.StateLeader
		if !n.leading {
			n.remoteReads = nil // their followers ask again
		}
		prev := n.lead.Swap(rd.SoftState.Lead)
		if prev != rd.SoftState.Lead {
			if rd.SoftState.Lead != raft.None {
				n.metrics.leaderChanges.Inc()
			}
			n.cfg.Logger.Info("leader changed", "leader", fmt.Sprintf("%x", rd.SoftState.Lead), "state", rd.SoftState.RaftState.String())
			// Read index requests asked of the old leader die with
			// it; their callers retry. Those never asked wait for
			// the next one (retryReads asks them at the next tick).
			n.metrics.failedReads.Add(float64(failAskedReads(inflight, ErrLeaderChanged)))
		}
		n.termStart = 0
		n.publishLocalReads()
		n.publishLease()
		// A new leader's view of its followers is there at once, not
		// a tick later: membership changes consult it.
		n.publishProgress(n.ticks.Load())
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		path := string(rd.Snapshot.GetData())
		n.steppedImages = slices.DeleteFunc(n.steppedImages, func(p string) bool { return p == path })
		if err := n.installSnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	if len(rd.Entries) > 0 || !raft.IsEmptyHardState(rd.HardState) {
		b := n.db.NewBatch()
		if err := n.log.Append(b, rd.HardState, rd.Entries); err != nil {
			_ = b.Close()
			return err
		}
		opts := pebble.NoSync
		if rd.MustSync {
			opts = pebble.Sync
			if n.cfg.SyncPacer != nil {
				n.cfg.SyncPacer.HoldAfterSync(syncHoldFor(len(rd.Entries), n.soleVoter))
			}
		}
		start := time.Now()
		if err := b.Commit(opts); err != nil {
			_ = b.Close()
			return fmt.Errorf("raftnode: persist %d entries: %w", len(rd.Entries), err)
		}
		if rd.MustSync {
			n.metrics.observeSync(start)
		}
		_ = b.Close()
		n.log.AfterAppend(rd.HardState, rd.Entries)
		if len(rd.Entries) > 0 {
			n.lastIdx.Store(rd.Entries[len(rd.Entries)-1].GetIndex())
		}
	}
	if rd.HardState != nil {
		n.term.Store(rd.HardState.GetTerm())
		n.commitIdx.Store(rd.HardState.GetCommit())
	}
	if !leading {
		n.send(coalesce(rd.Messages))
	}
	for _, rs := range rd.ReadStates {
		seq, mine := n.roundOf(rs.RequestCtx)
		if !mine {
			continue
		}
		r, ok := inflight[seq]
		if !ok {
			n.metrics.slowReads.Inc() // the round ended before its answer came
			continue
		}
		delete(inflight, seq)
		n.extendLease(r)
		n.reads.add(rs.Index, r.waiters, n.appliedIdx.Load())
		n.answerRemoteReads(r.remote, rs.Index)
	}
	if len(rd.CommittedEntries) > 0 {
		var cs *raftpb.ConfState
		for _, e := range rd.CommittedEntries {
			if n.termStart == 0 && e.GetTerm() == n.term.Load() && n.lead.Load() == n.cfg.ID {
				n.termStart = e.GetIndex()
				n.publishLocalReads()
				n.publishLease()
			}
			if e.GetType() == raftpb.EntryType_EntryNormal {
				continue
			}
			// Stop local reads before the configuration changes.
			wasSole := n.soleVoter
			n.soleVoter = false
			n.publishLocalReads()
			n.leaseConfChanged()
			c, err := n.applyConfChange(e)
			if err != nil {
				return err
			}
			cs = c
			if n.soleVoter = isSoleVoter(cs, n.cfg.ID); n.soleVoter && !wasSole {
				n.soleSince = e.GetIndex()
			}
			n.lease.setVoters(cs, n.cfg.ID)
			n.publishLocalReads()
		}
		n.applyQ.push(applyTask{ents: rd.CommittedEntries, cs: cs})
	}
	n.rn.Advance(rd)
	return nil
}

func (n *Node) applyConfChange(e *raftpb.Entry) (*raftpb.ConfState, error) {
	cc, _, err := entry.DecodeConfChange(e)
	if err != nil {
		return nil, fmt.Errorf("raftnode: %w", err)
	}
	cs := n.rn.ApplyConfChange(cc)
	if n.cfg.OnConfChange != nil {
		n.cfg.OnConfChange(cc.AsV2())
	}
	return cs, nil
}

// send hands messages to the transport.
func (n *Node) send(msgs []*raftpb.Message) {
	if len(msgs) == 0 {
		return
	}
	if n.cfg.Transport == nil {
		for _, m := range msgs {
			n.cfg.Logger.Debug("dropping message: no transport", "to", fmt.Sprintf("%x", m.GetTo()), "type", m.GetType().String())
		}
		return
	}
	n.cfg.Transport.Send(msgs)
}

func (n *Node) applyLoop() {
	for {
		select {
		case <-n.stopC:
			return
		case <-n.failedC:
			return
		case <-n.applyQ.wake:
		}
		for _, t := range n.applyQ.take() {
			if err := n.applyTask(t); err != nil {
				n.fail(err)
				return
			}
			n.applyQ.done(t)
			select {
			case <-n.stopC:
				return
			default:
			}
		}
	}
}

func (n *Node) applyTask(t applyTask) error {
	if t.image != nil {
		err := n.install(*t.image)
		t.done <- err
		return err
	}
	if err := n.sm.Apply(t.ents, t.cs); err != nil {
		return fmt.Errorf("raftnode: apply: %w", err)
	}
	if t.cs != nil {
		n.log.AfterConfState(t.cs)
	}
	last := t.ents[len(t.ents)-1].GetIndex()
	n.appliedIdx.Store(last)
	n.reads.advance(last)
	return nil
}

func (n *Node) truncate(to uint64) error {
	b := n.db.NewBatch()
	defer func() { _ = b.Close() }()
	term, err := n.log.Truncate(b, to)
	if err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("raftnode: truncate log to %d: %w", to, err)
	}
	n.log.AfterTruncate(to, term)
	return nil
}
