package apply

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	raftpb "go.etcd.io/raft/v3/raftpb"
)

// metricValue is a counter's or gauge's value.
func metricValue(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	m := &dto.Metric{}
	if err := c.Write(m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

// TestSnapshotApplyInProgress requires etcd's gauge of a snapshot being
// applied to be 1 while a Raft snapshot's install runs, and 0 around it.
func TestSnapshotApplyInProgress(t *testing.T) {
	m := openMember(t, t.TempDir())
	if v := metricValue(t, m.a.snapshotApplying); v != 0 {
		t.Fatalf("snapshot_apply_in_progress_total = %v before any install", v)
	}
	var during float64
	if err := m.a.Restore(func() error { during = metricValue(t, m.a.snapshotApplying); return nil }); err != nil {
		t.Fatal(err)
	}
	if after := metricValue(t, m.a.snapshotApplying); during != 1 || after != 0 {
		t.Fatalf("snapshot_apply_in_progress_total = %v during the install and %v after; want 1 and 0", during, after)
	}
}

// TestSlowApplyCounts requires a request that took longer than etcd's
// warning duration to apply to count as slow, and quick ones not to.
func TestSlowApplyCounts(t *testing.T) {
	m := openMember(t, t.TempDir())
	results, err := m.a.Apply([]*raftpb.Entry{put(t, 1, 1, "k", "v")}, nil)
	if err != nil || len(results) != 1 {
		t.Fatalf("apply: %v, %v", results, err)
	}
	if v := metricValue(t, m.a.slowApplies); v != 0 {
		t.Fatalf("a quick put counted %v slow applies", v)
	}
	m.a.observeApply(time.Now().Add(-2 * slowApply))
	if v := metricValue(t, m.a.slowApplies); v != 1 {
		t.Fatalf("a slow apply counted %v", v)
	}
}
