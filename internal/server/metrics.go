package server

import (
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// serverMetrics are the member's Prometheus metrics. Names, types and labels
// are etcd's wherever the meaning is the same, so that etcd's published
// dashboards and alert rules work unchanged. Each member has a registry of
// its own (not Prometheus's global one): tests run several in one process.
//
// Most are read when scraped, from the state the member keeps anyway; the
// few counted per request are atomic adds on series looked up beforehand.
type serverMetrics struct {
	registry *prometheus.Registry

	proposalsPending prometheus.Gauge
	proposalsFailed  prometheus.Counter
	healthSuccess    prometheus.Counter
	healthFailures   prometheus.Counter
	leasesExpired    prometheus.Counter
	clientBytesIn    atomic.Uint64 // bytes read from gRPC client connections
	clientBytesOut   atomic.Uint64 // bytes written to them
	grpc             *grpcMetrics
	keys             keyCounter
}

// clusterVersion is the cluster version etcd would report for Version:
// major.minor.
func clusterVersion() string {
	parts := strings.SplitN(Version, ".", 3)
	return parts[0] + "." + parts[1]
}

// newServerMetrics registers the member's metrics and those of its parts. It
// needs the Raft node, the applier and the transport made.
func (s *Server) newServerMetrics() *serverMetrics {
	reg := prometheus.NewRegistry()
	m := &serverMetrics{registry: reg}
	counter := func(subsystem, name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "etcd", Subsystem: subsystem, Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	gaugeFunc := func(subsystem, name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "etcd", Subsystem: subsystem, Name: name, Help: help}, f))
	}
	counterFunc := func(subsystem, name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "etcd", Subsystem: subsystem, Name: name, Help: help}, f))
	}
	info := func(subsystem, name, help, label, value string) {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "etcd", Subsystem: subsystem, Name: name, Help: help}, []string{label})
		g.WithLabelValues(value).Set(1)
		reg.MustRegister(g)
	}
	boolean := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}

	gaugeFunc("server", "has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
		func() float64 { return boolean(s.node.Leader() != 0) })
	gaugeFunc("server", "is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.",
		func() float64 { return boolean(s.node.Leader() == s.memberID) })
	gaugeFunc("server", "is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.",
		func() float64 { return boolean(s.Status().IsLearner) })
	// etcd's committed and applied "totals" are gauges: the indexes.
	gaugeFunc("server", "proposals_committed_total", "The total number of consensus proposals committed.",
		func() float64 { return float64(s.node.CommitIndex()) })
	gaugeFunc("server", "proposals_applied_total", "The total number of consensus proposals applied.",
		func() float64 { return float64(s.node.AppliedIndex()) })
	m.proposalsPending = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "etcd", Subsystem: "server", Name: "proposals_pending", Help: "The current number of pending proposals to commit."})
	reg.MustRegister(m.proposalsPending)
	m.proposalsFailed = counter("server", "proposals_failed_total", "The total number of failed proposals seen.")
	m.healthSuccess = counter("server", "health_success", "The total number of successful health checks")
	m.healthFailures = counter("server", "health_failures", "The total number of failed health checks")
	m.leasesExpired = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "etcd_debugging", Subsystem: "server", Name: "lease_expired_total", Help: "The total number of expired leases."})
	reg.MustRegister(m.leasesExpired)
	gaugeFunc("server", "quota_backend_bytes", "Current backend storage quota size in bytes.",
		func() float64 { return float64(s.quotaBytes()) })
	info("server", "id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
		"server_id", strconv.FormatUint(s.memberID, 16))
	info("server", "version", "Which version is running. 1 for 'server_version' label with current version.",
		"server_version", Version)
	info("cluster", "version", "Which version is running. 1 for 'cluster_version' label with current cluster version",
		"cluster_version", clusterVersion())

	gaugeFunc("mvcc", "db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.",
		func() float64 { return float64(s.quota.dbSize.Load()) })
	gaugeFunc("mvcc", "db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.",
		func() float64 { return float64(min(s.quota.dataSize.Load(), s.quota.dbSize.Load())) })
	gaugeFunc("debugging_mvcc", "keys_total", "Total number of keys.",
		func() float64 { return float64(m.keys.count(s)) })
	gaugeFunc("debugging_mvcc", "watcher_total", "Total number of watchers.",
		func() float64 { return float64(s.watches.Watchers()) })
	gaugeFunc("debugging_mvcc", "watch_stream_total", "Total number of watch streams.",
		func() float64 { return float64(s.watches.Streams()) })
	gaugeFunc("debugging_mvcc", "slow_watcher_total", "Total number of unsynced slow watchers.",
		func() float64 { return float64(s.watches.CatchingUp()) })
	counterFunc("debugging_mvcc", "events_total", "Total number of events sent by this member.",
		func() float64 { return float64(s.watches.EventsSent()) })
	gaugeFunc("debugging_mvcc", "current_revision", "The current revision of store.",
		func() float64 { return float64(s.kv.Rev()) })
	gaugeFunc("debugging_mvcc", "compact_revision", "The revision of the last compaction in store.",
		func() float64 { return float64(max(s.kv.CompactRev(), 0)) })

	counterFunc("network", "client_grpc_received_bytes_total", "The total number of bytes received from grpc clients.",
		func() float64 { return float64(m.clientBytesIn.Load()) })
	counterFunc("network", "client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients.",
		func() float64 { return float64(m.clientBytesOut.Load()) })

	reg.MustRegister(s.node.Collectors()...)
	reg.MustRegister(s.applier.Collectors()...)
	reg.MustRegister(s.applier.Leases().Collectors()...)
	reg.MustRegister(s.peers.Collectors()...)
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(collectors.NewGoCollector())
	m.grpc = newGRPCMetrics()
	reg.MustRegister(m.grpc.collectors()...)
	return m
}

// handler serves the registry in Prometheus's text format.
func (m *serverMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

func (m *serverMetrics) recordHealth(ok bool) {
	if ok {
		m.healthSuccess.Inc()
	} else {
		m.healthFailures.Inc()
	}
}

// keyCountInterval bounds how often a scrape counts the keys: counting reads
// every key, and a scrape must stay cheap.
const keyCountInterval = 10 * time.Second

// keyCounter caches the number of keys in the store.
type keyCounter struct {
	mu    sync.Mutex // guards the fields below; held while counting, so scrapes count once
	at    time.Time
	value int64
}

func (k *keyCounter) count(s *Server) int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.at.IsZero() && time.Since(k.at) < keyCountInterval {
		return k.value
	}
	resp, err := s.kv.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true})
	if err != nil {
		s.logger.Warn("count the keys for metrics", "err", err)
		return k.value
	}
	k.at, k.value = time.Now(), resp.Count
	return k.value
}

// countedListener counts the bytes of the connections it accepts: the gRPC
// clients' traffic, framing included, for etcd's client_grpc_*_bytes_total.
type countedListener struct {
	net.Listener
	in, out *atomic.Uint64
}

func (l countedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, in: l.in, out: l.out}, nil
}

type countedConn struct {
	net.Conn
	in, out *atomic.Uint64
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(uint64(n))
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(uint64(n))
	return n, err
}
