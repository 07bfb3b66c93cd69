package raftnode

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	raftpb "go.etcd.io/raft/v3/raftpb"
)

// nodeMetrics are the Node's Prometheus metrics, under etcd's names so that
// etcd's dashboards and alerts read them unchanged. Each Node has its own;
// the server registers them (Collectors) in its own registry.
type nodeMetrics struct {
	// walFsync times the synced commit of each Ready's log entries and
	// hard state: plinth's Raft log is in Pebble, and this commit is
	// where etcd fsyncs its WAL.
	walFsync      prometheus.Histogram
	leaderChanges prometheus.Counter
	// heartbeatFailures counts heartbeats a leader sent late: more than
	// two heartbeat intervals after the last one to the same follower
	// (its raft loop was held up, likely by a slow disk), as etcd counts.
	heartbeatFailures prometheus.Counter
	// slowReads counts read index rounds that timed out and answers to
	// rounds that had ended already; failedReads the rounds a leader
	// change failed.
	slowReads   prometheus.Counter
	failedReads prometheus.Counter
}

func newNodeMetrics() nodeMetrics {
	serverCounter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "etcd", Subsystem: "server", Name: name, Help: help})
	}
	return nodeMetrics{
		walFsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "etcd", Subsystem: "disk", Name: "wal_fsync_duration_seconds",
			Help: "The latency distributions of fsync called by WAL.",
			// etcd's buckets: 1ms to about 8s.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		leaderChanges: serverCounter("leader_changes_seen_total", "The number of leader changes seen."),
		heartbeatFailures: serverCounter("heartbeat_send_failures_total",
			"The total number of leader heartbeat send failures (likely overloaded from slow disk)."),
		slowReads: serverCounter("slow_read_indexes_total",
			"The total number of pending read indexes not in sync with leader's or timed out read index requests."),
		failedReads: serverCounter("read_indexes_failed_total", "The total number of failed read indexes seen."),
	}
}

// Collectors are the Node's metrics, for the server's registry.
func (n *Node) Collectors() []prometheus.Collector {
	m := n.metrics
	return []prometheus.Collector{m.walFsync, m.leaderChanges, m.heartbeatFailures, m.slowReads, m.failedReads}
}

// observeHeartbeats counts the heartbeats in msgs that go out late (see
// heartbeatFailures). lastHeartbeat is, per follower, when the last one
// went; the raft loop owns it and empties it when this member becomes the
// leader.
func (n *Node) observeHeartbeats(msgs []*raftpb.Message) {
	var now time.Time
	for _, m := range msgs {
		if m.GetType() != raftpb.MessageType_MsgHeartbeat {
			continue
		}
		if now.IsZero() {
			now = time.Now()
		}
		if last, ok := n.lastHeartbeat[m.GetTo()]; ok && now.Sub(last) > 2*n.cfg.TickInterval {
			n.metrics.heartbeatFailures.Inc()
		}
		n.lastHeartbeat[m.GetTo()] = now
	}
}

// observeSync records a synced log commit that began at start.
func (m *nodeMetrics) observeSync(start time.Time) {
	m.walFsync.Observe(time.Since(start).Seconds())
}
