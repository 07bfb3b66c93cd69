package server

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/plinthdb/plinth/internal/storage"
)

// damageValue changes the last byte of key's newest value in a stopped
// member's database, behind plinth's back: the version's revisions and
// version stay, so nothing but a hash can tell.
func damageValue(t *testing.T, dataDir, key string) {
	t.Helper()
	db, err := pebble.Open(storage.DatabaseDir(dataDir), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	k := append([]byte{storage.PrefixLatest}, key...)
	v, closer, err := db.Get(k)
	if err != nil {
		t.Fatal(err)
	}
	damaged := append([]byte(nil), v...)
	_ = closer.Close()
	damaged[len(damaged)-1] ^= 1
	if err := db.Set(k, damaged, pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptionDetected: a member whose data was changed on disk while it
// was down refuses to start with the initial check; started without it, the
// leader's periodic check finds it and raises CORRUPT for it, after which
// the cluster refuses writes, as etcd's does.
func TestCorruptionDetected(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "corrupt")
	lead := c.leader(ctx)
	cli := c.client(lead)
	for i := range 20 {
		if _, err := cli.Put(ctx, fmt.Sprintf("k%02d", i), "value"); err != nil {
			t.Fatal(err)
		}
	}
	victim := (lead + 1) % 3
	waitFor(ctx, t, func() bool { return c.servers[victim].kv.Rev() == c.servers[lead].kv.Rev() })
	c.stop(victim)
	damageValue(t, c.cfgs[victim].DataDir, "k07")

	cfg := c.cfgs[victim]
	cfg.CorruptCheck = CorruptCheck{Initial: true}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); !errors.Is(err, ErrCorruptData) {
		srv.Stop()
		t.Fatalf("start with the initial check over damaged data: %v, want %v", err, ErrCorruptData)
	}

	// The leader checks, whichever member it is; the damaged member
	// starts without the initial check.
	for i := range 3 {
		c.stop(i)
		c.cfgs[i].CorruptCheck = CorruptCheck{Period: 100 * time.Millisecond}
	}
	for i := range 3 {
		c.start(i)
	}
	lead = c.leader(ctx)
	victimID := c.servers[victim].memberID
	waitFor(ctx, t, func() bool {
		for _, a := range c.servers[lead].Alarms() {
			if a.MemberID == victimID && a.Alarm == pb.AlarmType_CORRUPT {
				return true
			}
		}
		return false
	})
	for _, a := range c.servers[lead].Alarms() {
		if a.MemberID != victimID {
			t.Fatalf("alarm %v raised for a member whose data is whole", a)
		}
	}
	if _, err := c.client(lead).Put(ctx, "after", "x"); !errors.Is(err, rpctypes.ErrCorrupt) {
		t.Fatalf("put while CORRUPT is active: %v, want %v", err, rpctypes.ErrCorrupt)
	}
}
