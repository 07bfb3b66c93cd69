package raftnode

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	raftpb "go.etcd.io/raft/v3/raftpb"
)

// counted is a counter's value.
func counted(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	m := &dto.Metric{}
	if err := c.Write(m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestHeartbeatSentLateCounts requires a leader's heartbeat to a follower
// sent more than two heartbeat intervals after the last one to count as a
// send failure, as etcd counts it, and one on time not to.
func TestHeartbeatSentLateCounts(t *testing.T) {
	n := &Node{cfg: Config{TickInterval: 100 * time.Millisecond}, lastHeartbeat: map[uint64]time.Time{}, metrics: newNodeMetrics()}
	hb := func(to uint64) *raftpb.Message {
		typ := raftpb.MessageType_MsgHeartbeat
		return &raftpb.Message{Type: &typ, To: &to}
	}
	app := raftpb.MessageType_MsgApp
	n.observeHeartbeats([]*raftpb.Message{hb(2), hb(3), {Type: &app}})
	n.observeHeartbeats([]*raftpb.Message{hb(2), hb(3)}) // on time
	if got := counted(t, n.metrics.heartbeatFailures); got != 0 {
		t.Fatalf("heartbeats on time counted %v failures", got)
	}
	n.lastHeartbeat[2] = time.Now().Add(-time.Second) // the raft loop was held up
	n.observeHeartbeats([]*raftpb.Message{hb(2), hb(3)})
	if got := counted(t, n.metrics.heartbeatFailures); got != 1 {
		t.Fatalf("one late heartbeat counted %v failures", got)
	}
}

// TestReadIndexTroubleCounts requires a read index round that times out to
// count as slow, and rounds a leader change fails as failed.
func TestReadIndexTroubleCounts(t *testing.T) {
	n := &Node{metrics: newNodeMetrics()}
	done := make(chan error, 3)
	inflight := map[uint64]*readRound{
		1: {waiters: []chan error{done}, started: 0, asked: 0, leader: 7},
		2: {waiters: []chan error{done}, started: 5, asked: 5, leader: 7},
		3: {waiters: []chan error{done}, started: 5},
	}
	n.retryReads(inflight, 10, 10) // round 1 has waited its timeout
	if got := counted(t, n.metrics.slowReads); got != 1 || len(inflight) != 2 {
		t.Fatalf("a timed-out round: %v slow, %d rounds left", got, len(inflight))
	}
	if failed := failAskedReads(inflight, ErrLeaderChanged); failed != 1 || len(inflight) != 1 {
		t.Fatalf("a leader change failed %d rounds, left %d; want 1 (the one asked) and 1", failed, len(inflight))
	}
}
