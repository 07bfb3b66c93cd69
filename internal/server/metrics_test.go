package server

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads /metrics from addr, the client port a member shares with gRPC.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", addr, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s's metrics: %v", addr, err)
	}
	return families
}

// value is the sum of the series of family name whose labels include want
// (name=value pairs): a counter's or gauge's value, a histogram's count.
func value(t *testing.T, families map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	f, ok := families[name]
	if !ok {
		t.Fatalf("metric %s is missing", name)
	}
	sum, matched := 0.0, false
series:
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for _, w := range want {
			k, v, _ := strings.Cut(w, "=")
			if labels[k] != v {
				continue series
			}
		}
		matched = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	if !matched {
		t.Fatalf("metric %s has no series with %v", name, want)
	}
	return sum
}

// TestMetricsMoveUnderLoad scrapes a three-member cluster's leader and a
// follower on their client ports before and after a burst of puts: etcd's
// metrics are there, with etcd's types and labels, and they move.
func TestMetricsMoveUnderLoad(t *testing.T) {
	c := startTestCluster(t, 3, "metrics")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lead := c.leader(ctx)
	follower := (lead + 1) % 3
	cli := c.client(lead)
	if _, err := cli.Put(ctx, "first", "v"); err != nil {
		t.Fatal(err)
	}
	leadAddr := c.cfgs[lead].ListenClientURLs[0].Host
	followerAddr := c.cfgs[follower].ListenClientURLs[0].Host
	before := scrape(t, leadAddr)

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if _, err := cli.Put(ctx, fmt.Sprintf("k%d-%d", w, i), "value"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("put: %v", err)
	}
	// The heartbeats' round trips are timed every heartbeat; give a few.
	time.Sleep(200 * time.Millisecond)
	after := scrape(t, leadAddr)

	put := []string{"grpc_type=unary", "grpc_service=etcdserverpb.KV", "grpc_method=Put"}
	grows := []struct {
		name   string
		labels []string
		by     float64 // at least
	}{
		{"etcd_server_proposals_committed_total", nil, 200},
		{"etcd_server_proposals_applied_total", nil, 200},
		{"etcd_disk_wal_fsync_duration_seconds", nil, 1},
		{"etcd_disk_backend_commit_duration_seconds", nil, 1},
		{"grpc_server_started_total", put, 200},
		{"grpc_server_handled_total", append(put, "grpc_code=OK"), 200},
		{"grpc_server_msg_received_total", put, 200},
		{"grpc_server_msg_sent_total", put, 200},
		{"grpc_server_handling_seconds", put, 200},
		{"etcd_network_client_grpc_received_bytes_total", nil, 200 * 10},
		{"etcd_network_client_grpc_sent_bytes_total", nil, 200 * 10},
		{"etcd_network_peer_sent_bytes_total", nil, 200 * 10},
		{"etcd_network_peer_received_bytes_total", nil, 1},
		{"etcd_network_peer_round_trip_time_seconds", nil, 1},
		{"process_cpu_seconds_total", nil, 0},
	}
	for _, g := range grows {
		b, a := value(t, before, g.name, g.labels...), value(t, after, g.name, g.labels...)
		if a-b < g.by || (g.by == 0 && a <= 0) {
			t.Errorf("%s%v: %v before, %v after 200 puts; want it up by %v", g.name, g.labels, b, a, g.by)
		}
	}

	leaderID := strconv.FormatUint(c.servers[lead].memberID, 16)
	followerID := strconv.FormatUint(c.servers[follower].memberID, 16)
	waitFor(ctx, t, func() bool {
		return c.servers[follower].node.AppliedIndex() >= c.servers[lead].node.AppliedIndex()
	})
	fams := scrape(t, followerAddr)
	gauges := []struct {
		families map[string]*dto.MetricFamily
		name     string
		labels   []string
		want     float64
	}{
		{after, "etcd_server_has_leader", nil, 1},
		{after, "etcd_server_is_leader", nil, 1},
		{fams, "etcd_server_has_leader", nil, 1},
		{fams, "etcd_server_is_leader", nil, 0},
		{after, "etcd_server_leader_changes_seen_total", nil, 1},
		{after, "etcd_server_proposals_pending", nil, 0},
		{after, "etcd_server_proposals_failed_total", nil, 0},
		{after, "etcd_server_id", []string{"server_id=" + leaderID}, 1},
		{after, "etcd_server_version", []string{"server_version=" + Version}, 1},
		{after, "etcd_cluster_version", []string{"cluster_version=" + clusterVersion()}, 1},
		{fams, "etcd_network_peer_received_bytes_total", []string{"From=" + leaderID}, -1},
		{after, "etcd_network_peer_sent_bytes_total", []string{"To=" + followerID}, -1},
		{after, "etcd_server_quota_backend_bytes", nil, DefaultQuotaBackendBytes},
	}
	for _, g := range gauges {
		got := value(t, g.families, g.name, g.labels...)
		if (g.want >= 0 && got != g.want) || (g.want < 0 && got <= 0) {
			t.Errorf("%s%v = %v, want %v (-1: above 0)", g.name, g.labels, got, g.want)
		}
	}
	// Messages dropped while the members were starting count as failures.
	_ = value(t, after, "etcd_network_peer_sent_failures_total", "To="+followerID)
	if v := value(t, after, "etcd_mvcc_db_total_size_in_bytes"); v <= 0 {
		t.Errorf("etcd_mvcc_db_total_size_in_bytes = %v", v)
	}
	if v := value(t, after, "etcd_mvcc_db_total_size_in_use_in_bytes"); v <= 0 {
		t.Errorf("etcd_mvcc_db_total_size_in_use_in_bytes = %v", v)
	}
	// The key count is cached between scrapes; a fresh member counts.
	if v := value(t, fams, "etcd_debugging_mvcc_keys_total"); v != 201 {
		t.Errorf("follower's etcd_debugging_mvcc_keys_total = %v, want 201", v)
	}
}

// dashboardSeries are the series etcd's published dashboards and alert rules
// query, with the labels their selectors require. They come from etcd's
// monitoring mixin (contrib/mixin/dashboards/targets.libsonnet and
// contrib/mixin/alerts/alerts.libsonnet) and from the older sample dashboard
// Documentation/op-guide/grafana.json. (up, also queried, is Prometheus's
// own; the sample dashboard's etcd_debugging_mvcc_db_total_size_in_bytes is
// an old name etcd 3.7 no longer serves, for etcd_mvcc_db_total_size_in_bytes.)
var dashboardSeries = []struct {
	name   string
	labels []string
}{
	{"etcd_server_has_leader", nil},
	{"etcd_server_leader_changes_seen_total", nil},
	{"etcd_server_proposals_failed_total", nil},
	{"etcd_server_proposals_pending", nil},
	{"etcd_server_proposals_committed_total", nil},
	{"etcd_server_proposals_applied_total", nil},
	{"etcd_server_quota_backend_bytes", nil},
	{"etcd_mvcc_db_total_size_in_bytes", nil},
	{"etcd_mvcc_db_total_size_in_use_in_bytes", nil},
	{"etcd_disk_wal_fsync_duration_seconds", nil},      // queried as _bucket
	{"etcd_disk_backend_commit_duration_seconds", nil}, // queried as _bucket
	{"etcd_network_client_grpc_received_bytes_total", nil},
	{"etcd_network_client_grpc_sent_bytes_total", nil},
	{"etcd_network_peer_received_bytes_total", nil},
	{"etcd_network_peer_sent_bytes_total", nil},
	{"etcd_network_peer_sent_failures_total", nil},
	{"etcd_network_peer_round_trip_time_seconds", nil}, // queried as _bucket
	{"grpc_server_started_total", []string{"grpc_type=unary"}},
	{"grpc_server_handled_total", []string{"grpc_type=unary"}},
	{"grpc_server_handling_seconds", []string{"grpc_type=unary"}}, // queried as _bucket
	{"process_resident_memory_bytes", nil},
}

// TestDashboardMetricsExist checks that every series etcd's dashboards and
// alerts query is served, on a member of a three-member cluster (peer
// series exist only with peers).
func TestDashboardMetricsExist(t *testing.T) {
	c := startTestCluster(t, 3, "dashboard")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lead := c.leader(ctx)
	if _, err := c.client(lead).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	families := scrape(t, c.cfgs[lead].ListenClientURLs[0].Host)
	for _, s := range dashboardSeries {
		_ = value(t, families, s.name, s.labels...)
	}
	// The dashboards count open Watch and Lease streams.
	for _, service := range []string{"etcdserverpb.Watch", "etcdserverpb.Lease"} {
		for _, name := range []string{"grpc_server_started_total", "grpc_server_handled_total"} {
			_ = value(t, families, name, "grpc_service="+service, "grpc_type=bidi_stream")
		}
	}
}

// TestOperatorMetrics checks etcd's metrics of slow work and of leases that
// operators alert on: they are served on a leader and a follower, the lease
// counters move with grants, keep-alives, revokes and expiries (as etcd
// counts them: grants and revokes on every member, keep-alives and expiries
// on the leader), and the ones that count trouble stay at zero without it.
func TestOperatorMetrics(t *testing.T) {
	c := startTestCluster(t, 3, "opmetrics")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lead := c.leader(ctx)
	follower := (lead + 1) % 3
	cli := c.client(lead)
	addr := func(i int) string { return c.cfgs[i].ListenClientURLs[0].Host }
	before, beforeF := scrape(t, addr(lead)), scrape(t, addr(follower))

	kept, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Grant(ctx, 1); err != nil { // expires
		t.Fatal(err)
	}
	if _, err := cli.KeepAliveOnce(ctx, kept.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	// A linearizable read takes a read index on the follower.
	if _, err := c.client(follower).Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	var after, afterF map[string]*dto.MetricFamily
	waitFor(ctx, t, func() bool {
		after = scrape(t, addr(lead))
		return value(t, after, "etcd_debugging_server_lease_expired_total")-value(t, before, "etcd_debugging_server_lease_expired_total") >= 1 &&
			value(t, after, "etcd_debugging_lease_revoked_total")-value(t, before, "etcd_debugging_lease_revoked_total") >= 2
	})
	waitFor(ctx, t, func() bool {
		afterF = scrape(t, addr(follower))
		return value(t, afterF, "etcd_debugging_lease_revoked_total")-value(t, beforeF, "etcd_debugging_lease_revoked_total") >= 2
	})
	moves := []struct {
		before, after map[string]*dto.MetricFamily
		name          string
		by            float64
	}{
		{before, after, "etcd_debugging_lease_granted_total", 3},
		{beforeF, afterF, "etcd_debugging_lease_granted_total", 3},
		{before, after, "etcd_debugging_lease_ttl_total", 3}, // a histogram: its count
		{before, after, "etcd_debugging_lease_renewed_total", 1},
		{beforeF, afterF, "etcd_debugging_lease_renewed_total", 0}, // keep-alives are the leader's
		{before, after, "etcd_debugging_lease_revoked_total", 2},
		{before, after, "etcd_debugging_server_lease_expired_total", 1},
		{beforeF, afterF, "etcd_debugging_server_lease_expired_total", 0},
	}
	for _, m := range moves {
		b, a := value(t, m.before, m.name), value(t, m.after, m.name)
		if (m.by > 0 && a-b < m.by) || (m.by == 0 && a != b) {
			t.Errorf("%s: %v before, %v after; want it up by %v", m.name, b, a, m.by)
		}
	}
	if got := after["etcd_debugging_lease_ttl_total"].GetMetric()[0].GetHistogram().GetSampleSum() - before["etcd_debugging_lease_ttl_total"].GetMetric()[0].GetHistogram().GetSampleSum(); got < 600+3600 {
		t.Errorf("etcd_debugging_lease_ttl_total's sum grew by %v, want the TTLs granted (at least %d)", got, 600+3600)
	}
	// Nothing here was slow or failed on a healthy cluster: these exist,
	// and unit tests of raftnode and apply make them move.
	for _, fams := range []map[string]*dto.MetricFamily{after, afterF} {
		for _, name := range []string{"etcd_server_slow_apply_total", "etcd_server_snapshot_apply_in_progress_total",
			"etcd_server_heartbeat_send_failures_total", "etcd_server_slow_read_indexes_total", "etcd_server_read_indexes_failed_total"} {
			_ = value(t, fams, name)
		}
		if v := value(t, fams, "etcd_server_snapshot_apply_in_progress_total"); v != 0 {
			t.Errorf("etcd_server_snapshot_apply_in_progress_total = %v with no snapshot being applied", v)
		}
	}
}
