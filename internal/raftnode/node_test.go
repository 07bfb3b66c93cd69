package raftnode

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	raftpb "go.etcd.io/raft/v3/raftpb"

	"github.com/plinthdb/plinth/internal/snapshot"
	"github.com/plinthdb/plinth/internal/storage"
)

// recorder is a state machine that keeps what it was given and, like the
// real one, persists its applied index and configuration.
type recorder struct {
	db      *pebble.DB
	mu      sync.Mutex
	applied []string
	index   uint64
	// hold, when set, stops the second batch given to Apply until it is
	// closed.
	hold    chan struct{}
	batches int
	// holdEntry, when set, stops the batch holding an entry of this data
	// until holdEntryC is closed.
	holdEntry  string
	holdEntryC chan struct{}
}

func (r *recorder) Apply(ents []*raftpb.Entry, cs *raftpb.ConfState) error {
	if r.batches++; r.batches == 2 && r.hold != nil {
		<-r.hold
	}
	if r.holdEntry != "" && slices.ContainsFunc(ents, func(e *raftpb.Entry) bool { return string(e.GetData()) == r.holdEntry }) {
		<-r.holdEntryC
	}
	b := r.db.NewBatch()
	defer func() { _ = b.Close() }()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range ents {
		if e.GetIndex() <= r.index {
			continue
		}
		r.index = e.GetIndex()
		if e.GetType() == raftpb.EntryType_EntryNormal && len(e.GetData()) > 0 {
			r.applied = append(r.applied, string(e.GetData()[:min(len(e.GetData()), 16)]))
		}
	}
	if err := storage.PutMetaUint64(b, storage.MetaAppliedIndex, r.index); err != nil {
		return err
	}
	if cs != nil {
		if err := storage.SaveConfState(b, cs); err != nil {
			return err
		}
	}
	return b.Commit(pebble.NoSync)
}

func (r *recorder) Install(img snapshot.Image) error {
	return errors.New("recorder: installs no snapshots")
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.applied...)
}

type testNode struct {
	n       *Node
	sm      *recorder
	db      *pebble.DB
	dropped chan uint64
}

func startNode(t *testing.T, dir string) *testNode { return startNodeHolding(t, dir, nil) }

// openLog opens the test member's database in dir and the log store over it.
func openLog(t *testing.T, dir string) (*pebble.DB, *storage.LogStore) {
	t.Helper()
	db, err := storage.Open(dir, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	log, err := storage.OpenLogStore(db)
	if err != nil {
		t.Fatal(err)
	}
	return db, log
}

func startNodeHolding(t *testing.T, dir string, hold chan struct{}) *testNode {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	db, log := openLog(t, dir)
	applied, err := storage.GetMetaUint64(db, storage.MetaAppliedIndex)
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{sm: &recorder{db: db, index: applied, hold: hold}, db: db, dropped: make(chan uint64, 16)}
	n, err := New(Config{
		ID: 1, Peers: []raft.Peer{{ID: 1}}, TickInterval: 10 * time.Millisecond, ElectionTicks: 10,
		Applied: applied, LogRetention: 50, Logger: logger,
		OnDropped: func(id uint64, err error) { tn.dropped <- id },
	}, db, log, tn.sm)
	if err != nil {
		t.Fatal(err)
	}
	tn.n = n
	n.Start()
	return tn
}

func (tn *testNode) stop() {
	tn.n.Stop()
	_ = tn.db.Close()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProposalsAreAppliedInOrderAndSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	tn := startNode(t, dir)
	const n = 300 // more than the log keeps, so the restart starts from a truncated log
	for i := 0; i < n; i++ {
		if err := tn.n.Propose(uint64(i), []byte{byte(i), byte(i >> 8)}); err != nil {
			t.Fatalf("propose %d: %v", i, err)
		}
	}
	// The state machine holds an entry before the node counts it applied:
	// wait for both.
	waitFor(t, "all proposals applied", func() bool {
		return len(tn.sm.snapshot()) == n && tn.n.AppliedIndex() > n
	})
	for i, data := range tn.sm.snapshot() {
		if data != string([]byte{byte(i), byte(i >> 8)}) {
			t.Fatalf("entry %d applied out of order: %x", i, data)
		}
	}
	if err := tn.n.ReadIndex(context.Background()); err != nil {
		t.Fatalf("read index: %v", err)
	}
	if tn.n.Leader() != 1 || tn.n.Term() == 0 {
		t.Fatalf("leader %d term %d", tn.n.Leader(), tn.n.Term())
	}
	appliedBefore := tn.n.AppliedIndex()
	tn.stop()

	tn = startNode(t, dir)
	defer tn.stop()
	if err := tn.n.Propose(1000, []byte("after restart")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new proposal applied", func() bool {
		got := tn.sm.snapshot()
		return len(got) == 1 && got[0] == "after restart"
	})
	if tn.n.AppliedIndex() <= appliedBefore {
		t.Fatalf("applied index went from %d to %d", appliedBefore, tn.n.AppliedIndex())
	}
}

// After a restart the state machine may lack entries that were applied (and
// acknowledged) before a crash, if the batch that applied them never reached
// the disk. A read must not be served until the log's entries are applied
// again, even though a sole voter skips the read index round.
func TestReadAfterRestartWaitsForReplay(t *testing.T) {
	dir := t.TempDir()
	tn := startNode(t, dir)
	// Large entries, so that raft hands the replay to the state machine in
	// more than one batch and a read can arrive between them.
	big := make([]byte, 512<<10)
	for i := 0; i < 100; i++ {
		if err := tn.n.Propose(uint64(i), big); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "writes applied", func() bool {
		return len(tn.sm.snapshot()) == 100 && tn.n.AppliedIndex() == tn.n.CommitIndex()
	})
	acked := tn.n.AppliedIndex()
	tn.stop()

	// Lose the state machine's progress back to the start of the log, as a
	// crash before its unsynced batches reached the disk would. (It cannot
	// lose more: the log is truncated in batches written after the apply
	// batches they depend on, and the WAL keeps their order.)
	db, log := openLog(t, dir)
	first, _ := log.FirstIndex()
	if first+40 > acked {
		t.Fatalf("log starts at %d; the test wants at least 40 of the %d entries left to replay", first, acked)
	}
	b := db.NewBatch()
	if err := storage.PutMetaUint64(b, storage.MetaAppliedIndex, first-1); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	_ = db.Close()

	hold := make(chan struct{})
	tn = startNodeHolding(t, dir, hold)
	defer tn.stop()
	waitFor(t, "the first replay batch applied", func() bool { return tn.n.AppliedIndex() > first })
	if applied := tn.n.AppliedIndex(); applied >= acked {
		t.Fatalf("the replay came in one batch (applied %d); the test needs two", applied)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := tn.n.ReadIndex(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read during the replay, at applied index %d of %d: %v, want it to wait", tn.n.AppliedIndex(), acked, err)
	}
	close(hold)
	if err := tn.n.ReadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	if applied := tn.n.AppliedIndex(); applied < acked {
		t.Fatalf("read served at applied index %d, before the replay reached %d", applied, acked)
	}
	// Once caught up, reads keep returning at once.
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := tn.n.ReadIndex(ctx); err != nil {
		t.Fatalf("read after replay: %v", err)
	}
}

// A state machine behind the start of the log cannot catch up: the entries
// it lacks are gone. New must say so rather than let raft panic.
func TestStateBehindTruncatedLogIsRefused(t *testing.T) {
	dir := t.TempDir()
	tn := startNode(t, dir)
	for i := 0; i < 300; i++ { // six times the retention: the log is truncated
		if err := tn.n.Propose(uint64(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all proposals applied", func() bool { return len(tn.sm.snapshot()) == 300 })
	// The raft loop truncates on its next turn after the applies; a tick
	// gives it one.
	waitFor(t, "the log truncated", func() bool {
		first, err := tn.n.log.FirstIndex()
		return err == nil && first > 1
	})
	tn.stop()

	db, log := openLog(t, dir)
	defer db.Close()
	if first, _ := log.FirstIndex(); first <= 1 {
		t.Fatalf("log starts at %d; the test needs it truncated", first)
	}
	// The state machine claims to have applied nothing.
	_, err := New(Config{ID: 1, Peers: []raft.Peer{{ID: 1}}, TickInterval: 10 * time.Millisecond, ElectionTicks: 10, Applied: 0, Logger: slog.New(slog.DiscardHandler)}, db, log, &recorder{db: db})
	if err == nil || !strings.Contains(err.Error(), "entries it needs are gone") {
		t.Fatalf("New with applied index 0 over a truncated log: %v, want an error naming the gap", err)
	}
}

func TestStoppedNodeRefusesWork(t *testing.T) {
	tn := startNode(t, t.TempDir())
	tn.stop()
	if err := tn.n.Propose(1, []byte("x")); !errors.Is(err, ErrStopped) {
		t.Fatalf("propose after stop: %v, want %v", err, ErrStopped)
	}
	if err := tn.n.ReadIndex(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("read after stop: %v, want %v", err, ErrStopped)
	}
}

func TestInboxIsBounded(t *testing.T) {
	q := newInbox[int](2)
	if !q.push(1) || !q.push(2) || q.push(3) {
		t.Fatalf("an inbox of 2 took a third item")
	}
	select {
	case <-q.wake:
	default:
		t.Fatalf("no wake-up after the queue became non-empty")
	}
	got := q.drain(nil)
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("drained %v", got)
	}
	if !q.push(4) {
		t.Fatalf("a drained inbox refused an item")
	}
}

// Only a Ready that shows many proposals in flight holds the next sync back
// (a lone client's one-entry Readies never wait); a sole voter's hold grows
// with the Ready, within its bound, and a member with peers holds the same
// whatever the Ready.
func TestSyncHoldOnlyUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		entries         int
		sole, withPeers time.Duration
	}{
		{0, 0, 0}, {1, 0, 0}, {loadedBatch - 1, 0, 0},
		{loadedBatch, loadedBatch * syncHoldPerEntry, clusterSyncHold},
		{100, 100 * syncHoldPerEntry, clusterSyncHold},
		{int(maxSyncHold / syncHoldPerEntry), maxSyncHold, clusterSyncHold},
		{maxEntriesPerProposal, maxSyncHold, clusterSyncHold},
	} {
		if got := syncHoldFor(tc.entries, true); got != tc.sole {
			t.Errorf("syncHoldFor(%d, sole voter) = %v, want %v", tc.entries, got, tc.sole)
		}
		if got := syncHoldFor(tc.entries, false); got != tc.withPeers {
			t.Errorf("syncHoldFor(%d, with peers) = %v, want %v", tc.entries, got, tc.withPeers)
		}
	}
}

// While the apply loop is stuck in a long apply, the raft loop goes on:
// entries proposed meanwhile are committed (and, with peers, heartbeats go
// out), instead of everything waiting for the apply to end.
func TestRaftLoopRunsDuringALongApply(t *testing.T) {
	hold := make(chan struct{})
	tn := startNodeHolding(t, t.TempDir(), hold)
	released := false
	defer func() {
		if !released {
			close(hold)
		}
		tn.stop()
	}()
	waitFor(t, "a leader", func() bool { return tn.n.Leader() == 1 })
	// The second batch the state machine gets (the leader's first entry,
	// or a proposal) is held.
	if err := tn.n.Propose(1, []byte("held")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an entry committed but held", func() bool { return tn.n.CommitIndex() > tn.n.AppliedIndex() })
	held := tn.n.CommitIndex()
	for i := range 100 {
		if err := tn.n.Propose(uint64(10+i), []byte("more")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "entries committed behind the held apply", func() bool { return tn.n.CommitIndex() >= held+100 })
	close(hold)
	released = true
	waitFor(t, "every entry applied", func() bool { return tn.n.AppliedIndex() == tn.n.CommitIndex() && len(tn.sm.snapshot()) == 101 })
}

// A read index answer meant for an earlier run of the member (delayed in the
// network across a restart) must not answer a read of this run: the request
// contexts of the two runs differ even where their round numbers agree.
func TestReadContextsAreUniqueAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	first := startNode(t, dir)
	before := first.n.readContext(1)
	first.stop()
	second := startNode(t, dir)
	defer second.stop()
	if seq, mine := second.n.roundOf(before); mine {
		t.Fatalf("round 1 of the previous run was taken as this run's round %d", seq)
	}
	if seq, mine := second.n.roundOf(second.n.readContext(1)); !mine || seq != 1 {
		t.Fatalf("this run's own round 1 read as %d, %v", seq, mine)
	}
}

// A leader-only proposal goes in while its member leads in its term, and is
// dropped, not forwarded, once the term it names is not the one this member
// leads (a leader deposed, then the decision it made before).
func TestLeaderOnlyProposalsNeedTheirTerm(t *testing.T) {
	tn := startNode(t, t.TempDir())
	defer tn.stop()
	waitFor(t, "leadership", func() bool { return tn.n.Leader() == 1 && tn.n.Term() > 0 })
	term := tn.n.Term()
	if err := tn.n.ProposeAsLeader(1, []byte("in its term"), term); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the proposal of the current term applied", func() bool {
		got := tn.sm.snapshot()
		return len(got) == 1 && got[0] == "in its term"
	})
	if err := tn.n.ProposeAsLeader(2, []byte("of another term"), term+1); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-tn.dropped:
		if id != 2 {
			t.Fatalf("dropped proposal %d, want 2", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("a proposal of term %d was not dropped by the leader of term %d; applied: %q", term+1, term, tn.sm.snapshot())
	}
	if got := tn.sm.snapshot(); len(got) != 1 {
		t.Fatalf("applied %q; the proposal of another term must not be", got)
	}
}
