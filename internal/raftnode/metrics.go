package raftnode

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
}

func newNodeMetrics() nodeMetrics {
	return nodeMetrics{
		walFsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "etcd", Subsystem: "disk", Name: "wal_fsync_duration_seconds",
			Help: "The latency distributions of fsync called by WAL.",
			// etcd's buckets: 1ms to about 8s.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "etcd", Subsystem: "server", Name: "leader_changes_seen_total",
			Help: "The number of leader changes seen.",
		}),
	}
}

// Collectors are the Node's metrics, for the server's registry.
func (n *Node) Collectors() []prometheus.Collector {
	return []prometheus.Collector{n.metrics.walFsync, n.metrics.leaderChanges}
}

// observeSync records a synced log commit that began at start.
func (m *nodeMetrics) observeSync(start time.Time) {
	m.walFsync.Observe(time.Since(start).Seconds())
}
