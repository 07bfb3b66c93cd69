package raftnode

import (
	"log/slog"
	"sync"
	"testing"
	"time"

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
