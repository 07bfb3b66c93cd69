package lease

import "github.com/prometheus/client_golang/prometheus"

// tableMetrics are the lease table's Prometheus metrics, under etcd's names
// (etcd_debugging_lease_*): grants and revokes counted as applied, on every
// member, and keep-alives as the primary takes them, as etcd's lessor counts
// them. Each Table has its own; the server registers them (Collectors).
type tableMetrics struct {
	granted prometheus.Counter
	revoked prometheus.Counter
	renewed prometheus.Counter
	ttls    prometheus.Histogram
}

func newTableMetrics() tableMetrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "etcd_debugging", Subsystem: "lease", Name: name, Help: help})
	}
	return tableMetrics{
		granted: counter("granted_total", "The total number of granted leases."),
		revoked: counter("revoked_total", "The total number of revoked leases."),
		renewed: counter("renewed_total", "The number of renewed leases seen by the leader."),
		ttls: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "etcd_debugging", Subsystem: "lease", Name: "ttl_total",
			Help: "Bucketed histogram of lease TTLs.",
			// etcd's buckets: 1 second to about 3 months.
			Buckets: prometheus.ExponentialBuckets(1, 2, 24),
		}),
	}
}

// Collectors are the table's metrics, for the server's registry.
func (t *Table) Collectors() []prometheus.Collector {
	m := t.metrics
	return []prometheus.Collector{m.granted, m.revoked, m.renewed, m.ttls}
}
