package server

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestParseAutoCompaction(t *testing.T) {
	for _, tt := range []struct {
		mode, retention string
		want            AutoCompaction
		bad             bool
	}{
		{"periodic", "0", AutoCompaction{}, false},
		{"periodic", "2", AutoCompaction{Period: 2 * time.Hour}, false},
		{"periodic", "30m", AutoCompaction{Period: 30 * time.Minute}, false},
		{"revision", "1000", AutoCompaction{Revisions: 1000}, false},
		{"periodic", "soon", AutoCompaction{}, true},
		{"periodic", "-1h", AutoCompaction{}, true},
		{"revision", "1h", AutoCompaction{}, true},
		{"weekly", "1", AutoCompaction{}, true},
	} {
		got, err := ParseAutoCompaction(tt.mode, tt.retention)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("ParseAutoCompaction(%q, %q) = %+v, %v; want %+v, error %v", tt.mode, tt.retention, got, err, tt.want, tt.bad)
		}
	}
}

// TestAutoCompactionByRevision: the leader keeps the last Revisions
// revisions, compacting on its own as writes go on.
func TestAutoCompactionByRevision(t *testing.T) {
	srv, cli := startServerWith(t, t.TempDir(), func(c *Config) {
		c.AutoCompaction = AutoCompaction{Revisions: 10, Interval: 50 * time.Millisecond}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last int64
	for i := range 60 {
		resp, err := cli.Put(ctx, "k", string(rune('a'+i%26)))
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	waitFor(ctx, t, func() bool { return srv.kv.CompactRev() == last-10 })
	if _, err := cli.Get(ctx, "k", clientv3.WithRev(last-11)); err != rpctypes.ErrCompacted {
		t.Fatalf("get below the kept revisions: %v, want %v", err, rpctypes.ErrCompacted)
	}
	if _, err := cli.Get(ctx, "k", clientv3.WithRev(last-10)); err != nil {
		t.Fatalf("get at the oldest kept revision: %v", err)
	}
}

// TestAutoCompactionPeriodic: every compaction the leader makes keeps at
// least Period of history: the revision it compacts at was already current
// Period before.
func TestAutoCompactionPeriodic(t *testing.T) {
	const period = 500 * time.Millisecond
	srv, cli := startServerWith(t, t.TempDir(), func(c *Config) {
		c.AutoCompaction = AutoCompaction{Period: period}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reached := map[int64]time.Time{} // revision -> when a put returned it
	var compactions []revisionSample // compaction revisions as first seen
	start := time.Now()
	for time.Since(start) < 4*period {
		resp, err := cli.Put(ctx, "k", "v")
		if err != nil {
			t.Fatal(err)
		}
		reached[resp.Header.Revision] = time.Now()
		if c := srv.kv.CompactRev(); c > 0 && (len(compactions) == 0 || compactions[len(compactions)-1].rev != c) {
			compactions = append(compactions, revisionSample{at: time.Now(), rev: c})
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(compactions) == 0 {
		t.Fatalf("no compaction in %v with a period of %v", 4*period, period)
	}
	// A put's answer comes a little after its revision is applied; allow
	// for that.
	const slack = 50 * time.Millisecond
	for _, c := range compactions {
		at, ok := reached[c.rev]
		if !ok {
			continue // reached by the first put's bootstrap entries
		}
		if kept := c.at.Sub(at); kept < period-slack {
			t.Errorf("compacted at revision %d, reached only %v before the compaction was seen; want at least %v of history", c.rev, kept, period)
		}
	}
}
