package transport

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// transportMetrics are the transport's Prometheus metrics, under etcd's names
// and labels (To, From: the peer's ID in hex) so that etcd's dashboards and
// alerts read them unchanged. Each Transport has its own; the server
// registers them (Collectors) in its own registry.
type transportMetrics struct {
	sentBytes     *prometheus.CounterVec
	receivedBytes *prometheus.CounterVec
	sentFailures  *prometheus.CounterVec
	roundTrip     *prometheus.HistogramVec
}

func newTransportMetrics() transportMetrics {
	return transportMetrics{
		sentBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "etcd", Subsystem: "network", Name: "peer_sent_bytes_total",
			Help: "The total number of bytes sent to peers.",
		}, []string{"To"}),
		receivedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "etcd", Subsystem: "network", Name: "peer_received_bytes_total",
			Help: "The total number of bytes received from peers.",
		}, []string{"From"}),
		sentFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "etcd", Subsystem: "network", Name: "peer_sent_failures_total",
			Help: "The total number of send failures to peers.",
		}, []string{"To"}),
		roundTrip: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "etcd", Subsystem: "network", Name: "peer_round_trip_time_seconds",
			Help: "Round-Trip-Time histogram between peers.",
			// etcd's buckets: 0.1ms to about 3.3s.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"To"}),
	}
}

// Collectors are the transport's metrics, for the server's registry.
func (t *Transport) Collectors() []prometheus.Collector {
	m := t.metrics
	return []prometheus.Collector{m.sentBytes, m.receivedBytes, m.sentFailures, m.roundTrip}
}

func peerLabel(id uint64) string { return strconv.FormatUint(id, 16) }

// peerMetrics are one peer's series, looked up once: sending a message
// costs an atomic add, not a label lookup.
type peerMetrics struct {
	sentBytes    prometheus.Counter
	sentFailures prometheus.Counter
	roundTrip    prometheus.Observer
	// heartbeatSent is when the heartbeat being timed was written
	// (UnixNano), 0 when none is. The round trip is measured from a
	// heartbeat's write to the peer's answer: what etcd's prober
	// measures, plus the peer's Raft loop.
	heartbeatSent atomic.Int64
}

func (m *transportMetrics) forPeer(id uint64) *peerMetrics {
	l := peerLabel(id)
	return &peerMetrics{
		sentBytes:    m.sentBytes.WithLabelValues(l),
		sentFailures: m.sentFailures.WithLabelValues(l),
		roundTrip:    m.roundTrip.WithLabelValues(l),
	}
}

// unansweredHeartbeat is how long a timed heartbeat waits for its answer
// before the next one replaces it: a lost heartbeat must not be timed by
// the answer to a later one.
const unansweredHeartbeat = 2 * time.Second

func (m *peerMetrics) heartbeatWritten() {
	now := time.Now().UnixNano()
	if sent := m.heartbeatSent.Load(); sent == 0 || now-sent > int64(unansweredHeartbeat) {
		m.heartbeatSent.Store(now)
	}
}

func (m *peerMetrics) heartbeatAnswered() {
	if sent := m.heartbeatSent.Swap(0); sent != 0 {
		m.roundTrip.Observe(time.Duration(time.Now().UnixNano() - sent).Seconds())
	}
}

// peerMetricsOf is the metrics of the peer id, nil if it is not known.
func (t *Transport) peerMetricsOf(id uint64) *peerMetrics {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.peers[id]; p != nil {
		return p.metrics
	}
	return nil
}
