package raftnode

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/plinthdb/plinth/internal/storage"
	"go.etcd.io/raft/v3"
	raftpb "go.etcd.io/raft/v3/raftpb"
)

// sentLog is a Transport that keeps what the node sends.
type sentLog struct {
	mu   sync.Mutex
	msgs []*raftpb.Message
}

func (s *sentLog) Send(msgs []*raftpb.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, msgs...)
}

// count returns how many messages of type typ went to member to.
func (s *sentLog) count(typ raftpb.MessageType, to uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		if m.GetType() == typ && m.GetTo() == to {
			n++
		}
	}
	return n
}

// A member that has just started may have acknowledged a leader's read lease
// before it restarted; Raft, having forgotten that leader, would grant a vote
// at once. It must answer no vote or pre-vote for an election timeout after
// it starts, except a leadership transfer's, which no lease covers.
func TestVotesWaitAnElectionTimeoutAfterStart(t *testing.T) {
	db, log := openLog(t, t.TempDir())
	defer func() { _ = db.Close() }()
	sent := &sentLog{}
	n, err := New(Config{
		ID: 1, Peers: []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}}, TickInterval: 10 * time.Millisecond, ElectionTicks: 10,
		Transport: sent, Logger: slog.New(slog.DiscardHandler),
	}, db, log, &recorder{db: db})
	if err != nil {
		t.Fatal(err)
	}
	n.Start()
	defer n.Stop()
	ask := func(typ raftpb.MessageType, from, term uint64, context []byte) {
		to, logTerm, index := uint64(1), term, uint64(1000)
		n.Step(&raftpb.Message{Type: &typ, From: &from, To: &to, Term: &term, LogTerm: &logTerm, Index: &index, Context: context})
	}

	ask(raftpb.MessageType_MsgPreVote, 2, 50, nil)
	ask(raftpb.MessageType_MsgVote, 3, 50, campaignTransfer)
	// The raft loop steps messages in the order they came, each within a
	// tick or two of its arrival, and sends what a step asks for in the
	// Ready that follows: once the vote is answered, so would the pre-vote
	// have been.
	waitFor(t, "the transfer's vote answered", func() bool { return sent.count(raftpb.MessageType_MsgVoteResp, 3) == 1 })
	if got := sent.count(raftpb.MessageType_MsgPreVoteResp, 2); got != 0 {
		t.Fatalf("a pre-vote was answered %d times within the election timeout after the start", got)
	}

	waitFor(t, "an election timeout of ticks", func() bool { return n.ticks.Load() >= 10 })
	ask(raftpb.MessageType_MsgPreVote, 2, 60, nil)
	waitFor(t, "the pre-vote answered", func() bool { return sent.count(raftpb.MessageType_MsgPreVoteResp, 2) == 1 })
}

// scriptedFollower plays member 2 of the cluster of the node under test
// (member 1): it grants every vote and acknowledges every heartbeat and
// append, except that while withholding it keeps the appends'
// acknowledgments back until ack releases them. Other members never answer.
type scriptedFollower struct {
	n        *Node
	msgs     chan *raftpb.Message
	withhold atomic.Bool

	mu       sync.Mutex
	withheld []*raftpb.Message // appends not yet acknowledged
	commit   uint64            // the highest commit index member 2 was told
	entries  map[string]uint64 // the index of each entry member 2 got, by its data
}

func (f *scriptedFollower) Send(msgs []*raftpb.Message) {
	for _, m := range msgs {
		if m.GetTo() == 2 {
			f.msgs <- m
		}
	}
}

// run answers the node's messages until stop is closed.
func (f *scriptedFollower) run(stop <-chan struct{}) {
	for {
		var m *raftpb.Message
		select {
		case <-stop:
			return
		case m = <-f.msgs:
		}
		f.mu.Lock()
		f.commit = max(f.commit, m.GetCommit())
		for _, e := range m.GetEntries() {
			if len(e.GetData()) > 0 {
				f.entries[string(e.GetData())] = e.GetIndex()
			}
		}
		f.mu.Unlock()
		switch m.GetType() {
		case raftpb.MessageType_MsgPreVote:
			f.reply(m, raftpb.MessageType_MsgPreVoteResp, 0, nil)
		case raftpb.MessageType_MsgVote:
			f.reply(m, raftpb.MessageType_MsgVoteResp, 0, nil)
		case raftpb.MessageType_MsgHeartbeat:
			f.reply(m, raftpb.MessageType_MsgHeartbeatResp, 0, m.GetContext())
		case raftpb.MessageType_MsgApp:
			if f.withhold.Load() {
				f.mu.Lock()
				f.withheld = append(f.withheld, m)
				f.mu.Unlock()
				continue
			}
			f.reply(m, raftpb.MessageType_MsgAppResp, m.GetIndex()+uint64(len(m.GetEntries())), nil)
		}
	}
}

func (f *scriptedFollower) reply(m *raftpb.Message, typ raftpb.MessageType, index uint64, context []byte) {
	from, to, term := uint64(2), uint64(1), m.GetTerm()
	f.n.Step(&raftpb.Message{Type: &typ, From: &from, To: &to, Term: &term, Index: &index, Context: context})
}

// ack acknowledges the withheld appends up to index, as member 2 would once
// it persisted them.
func (f *scriptedFollower) ack(index uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.withheld {
		if m.GetIndex()+uint64(len(m.GetEntries())) >= index {
			f.reply(m, raftpb.MessageType_MsgAppResp, index, nil)
			return
		}
	}
}

// sentEntry returns the index of the entry holding data that member 2 got,
// or 0.
func (f *scriptedFollower) sentEntry(data string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.entries[data]
}

func (f *scriptedFollower) toldCommit() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.commit
}

// leadWithScriptedFollower starts member 1 of a cluster of members 1 to
// voters, over fs, with sm as its state machine (its db is set here), member
// 2 played by a scriptedFollower and the rest silent, and makes it the
// leader. Its two-second election timeout gives a lease (1.76s) that
// outlasts a test's steps on a slow machine. peerVoteHold is its
// Config.PeerVoteHold. The test's cleanup stops it.
func leadWithScriptedFollower(t *testing.T, fs vfs.FS, voters uint64, sm *recorder, peerVoteHold func(uint64) (time.Duration, bool)) (*Node, *scriptedFollower, *recorder) {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	db, err := storage.OpenFS(fs, t.TempDir(), logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	log, err := storage.OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	sm.db = db
	var peers []raft.Peer
	for id := range voters {
		peers = append(peers, raft.Peer{ID: id + 1})
	}
	follower := &scriptedFollower{msgs: make(chan *raftpb.Message, 1024), entries: map[string]uint64{}}
	n, err := New(Config{
		ID: 1, Peers: peers, TickInterval: 20 * time.Millisecond, ElectionTicks: 100,
		ReadLease: true, Transport: follower, Logger: logger, OnDropped: func(uint64, error) {},
		PeerVoteHold: peerVoteHold,
	}, db, log, sm)
	if err != nil {
		t.Fatal(err)
	}
	follower.n = n
	stopFollower := make(chan struct{})
	go follower.run(stopFollower)
	n.Start()
	t.Cleanup(func() {
		n.Stop()
		close(stopFollower)
	})
	// Raft campaigns only once the bootstrap's configuration is applied.
	waitFor(t, "the configuration applied", func() bool { return n.appliedIdx.Load() >= voters })
	n.ctrlQueue.push(func(rn *raft.RawNode) { _ = rn.Campaign() })
	waitFor(t, "leadership", func() bool { return n.lead.Load() == 1 })
	return n, follower, sm
}

// A leader tells its followers of a new commit index before it persists the
// Ready that carries it, and a follower may apply a write and acknowledge it
// meanwhile. A read the leader answers from its lease must then wait for that
// write: its index is the commit index sent, not the one persisted.
func TestLeaseReadWaitsForWhatFollowersMayHaveApplied(t *testing.T) {
	// The WAL's syncs can be held one at a time: syncWaiting says a sync
	// waits, release lets one go.
	var holdSyncs atomic.Bool
	syncWaiting, release := make(chan struct{}), make(chan struct{})
	fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if holdSyncs.Load() && strings.HasSuffix(op.Path, ".log") {
				syncWaiting <- struct{}{}
				<-release
			}
		}
		return nil
	}))
	n, follower, _ := leadWithScriptedFollower(t, fs, 3, &recorder{}, nil)
	t.Cleanup(func() {
		holdSyncs.Store(false)
		close(release)
	})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := n.ReadIndex(ctx); err != nil { // a round, which gives the lease
		t.Fatal(err)
	}
	if n.lease.untilNanos.Load() == 0 {
		t.Fatal("no lease after a read index round that member 2 acknowledged")
	}

	// Write E; member 2 gets it but does not acknowledge it yet.
	follower.withhold.Store(true)
	if err := n.Propose(1, []byte("E")); err != nil {
		t.Fatal(err)
	}
	var indexE uint64
	waitFor(t, "E sent to member 2", func() bool { indexE = follower.sentEntry("E"); return indexE != 0 })
	waitFor(t, "E persisted", func() bool { return n.lastIdx.Load() >= indexE })

	// Write F, whose sync the leader is held in.
	holdSyncs.Store(true)
	if err := n.Propose(2, []byte("F")); err != nil {
		t.Fatal(err)
	}
	<-syncWaiting
	// Member 2 acknowledges E, and G is proposed: the leader's next Ready
	// commits E, sends member 2 that news with G, and is held in G's sync.
	follower.ack(indexE)
	if err := n.Propose(3, []byte("G")); err != nil {
		t.Fatal(err)
	}
	release <- struct{}{}
	<-syncWaiting
	waitFor(t, "member 2 told E is committed", func() bool { return follower.toldCommit() >= indexE })
	if n.lease.untilNanos.Load() == 0 {
		t.Fatal("the lease was lost before the read")
	}

	// Member 2 may have applied E and acknowledged it. The leader's read
	// must wait for E, which it applies once G is persisted.
	readCtx, cancelRead := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelRead()
	err := n.ReadIndex(readCtx)
	if applied := n.appliedIdx.Load(); err == nil && applied < indexE {
		t.Fatalf("a lease read returned with %d applied, below E (%d), which member 2 may have acknowledged", applied, indexE)
	}
	holdSyncs.Store(false)
	release <- struct{}{}
	if err := n.ReadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if applied := n.appliedIdx.Load(); applied < indexE {
		t.Fatalf("a lease read returned with %d applied, below E (%d)", applied, indexE)
	}
}

// A leader that a configuration change leaves the only voter reads locally,
// without asking anyone. The voter removed may have applied and acknowledged
// a write committed before the change that the leader has not applied yet:
// local reads must wait until the change, and so that write, is applied here.
func TestLocalReadsWaitForTheChangeThatMadeThemSafe(t *testing.T) {
	sm := &recorder{holdEntry: "X", holdEntryC: make(chan struct{})}
	n, follower, _ := leadWithScriptedFollower(t, vfs.Default, 2, sm, nil)
	released := false
	release := func() {
		if !released {
			released = true
			close(sm.holdEntryC)
		}
	}
	t.Cleanup(release)

	// X commits (member 2 acknowledges it, and may apply it and answer its
	// client); its apply here is held.
	if err := n.Propose(1, []byte("X")); err != nil {
		t.Fatal(err)
	}
	var indexX uint64
	waitFor(t, "X sent to member 2", func() bool { indexX = follower.sentEntry("X"); return indexX != 0 })
	waitFor(t, "member 2 told X is committed", func() bool { return follower.toldCommit() >= indexX })
	member2 := uint64(2)
	if err := n.ProposeConfChange(2, &raftpb.ConfChange{Type: raftpb.ConfChangeType_ConfChangeRemoveNode.Enum(), NodeId: &member2}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the leader the only voter", func() bool { return n.localReadFrom.Load() != 0 })

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	readCtx, cancelRead := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelRead()
	err := n.ReadIndex(readCtx)
	if applied := n.appliedIdx.Load(); err == nil && applied < indexX {
		t.Fatalf("a local read returned with %d applied, below X (%d), which member 2 may have acknowledged", applied, indexX)
	}
	release()
	if err := n.ReadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if applied := n.appliedIdx.Load(); applied < indexX {
		t.Fatalf("a local read returned with %d applied, below X (%d)", applied, indexX)
	}
}

// A member run with a shorter election timeout than the leader's refuses
// votes for less time: the lease lasts no longer than the shortest hold a
// voter told, and not at all while a voter's is unknown.
func TestLeaseLastsNoLongerThanTheShortestVoteHold(t *testing.T) {
	var mu sync.Mutex
	holds := map[uint64]time.Duration{2: 300 * time.Millisecond} // member 3's unknown
	n, _, _ := leadWithScriptedFollower(t, vfs.Default, 3, &recorder{}, func(id uint64) (time.Duration, bool) {
		mu.Lock()
		defer mu.Unlock()
		hold, ok := holds[id]
		return hold, ok
	})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := n.ReadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if until := n.lease.untilNanos.Load(); until != 0 {
		t.Fatalf("a lease (%v left) while member 3's vote hold is unknown", time.Duration(until)-time.Since(n.lease.base))
	}

	mu.Lock()
	holds[3] = 1500 * time.Millisecond
	mu.Unlock()
	start := time.Now()
	if err := n.ReadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	rounds := n.ReadIndexRounds()
	until := n.lease.untilNanos.Load()
	if until == 0 {
		t.Fatal("no lease once every voter's vote hold is known")
	}
	// Member 2's hold (300ms) less the clock margin, from the round's
	// start, which came within took of start.
	if left := time.Duration(until) - start.Sub(n.lease.base); left > 270*time.Millisecond+took {
		t.Fatalf("the lease runs %v past the read's call, %v after it answered: longer than member 2's hold allows (270ms)", left, left-took)
	}
	time.Sleep(time.Duration(until) - time.Since(n.lease.base))
	if _, _, ok := n.leaseReadIndex(); ok {
		t.Fatal("a lease read after the lease ended")
	}
	// No read used the lease: nothing renewed it.
	if asked := n.ReadIndexRounds() - rounds; asked != 0 {
		t.Fatalf("%d read index rounds asked while no read came", asked)
	}
}
