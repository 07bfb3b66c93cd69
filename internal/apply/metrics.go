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

// slowApply is how long applying one request may take before it counts as
// slow: etcd's default --warning-apply-duration.
const slowApply = 100 * time.Millisecond

func newSlowApplyCounter() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "etcd", Subsystem: "server", Name: "slow_apply_total",
		Help: "The total number of slow apply requests (likely overloaded from slow disk).",
	})
}

func newSnapshotApplyGauge() prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd", Subsystem: "server", Name: "snapshot_apply_in_progress_total",
		Help: "1 if the server is applying the incoming snapshot. 0 if none.",
	})
}

// Collectors are the Applier's metrics, for the server's registry.
func (a *Applier) Collectors() []prometheus.Collector {
	return []prometheus.Collector{a.commitSeconds, a.slowApplies, a.snapshotApplying}
}

// observeApply counts a request whose apply began at start if it was slow.
func (a *Applier) observeApply(start time.Time) {
	if time.Since(start) > slowApply {
		a.slowApplies.Inc()
	}
}

func (a *Applier) observeCommit(start time.Time) {
	a.commitSeconds.Observe(time.Since(start).Seconds())
}
