package apply

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// newBackendCommitHistogram times the commit of each apply batch, under
// etcd's name for its backend commit (what etcd's dashboards call "DB
// fsync"): plinth's state machine writes are this batch.
func newBackendCommitHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "etcd", Subsystem: "disk", Name: "backend_commit_duration_seconds",
		Help: "The latency distributions of commit called by backend.",
		// etcd's buckets: 1ms to about 8s.
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
}

// Collectors are the Applier's metrics, for the server's registry.
func (a *Applier) Collectors() []prometheus.Collector {
	return []prometheus.Collector{a.commitSeconds}
}

func (a *Applier) observeCommit(start time.Time) {
	a.commitSeconds.Observe(time.Since(start).Seconds())
}
