package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
	"github.com/plinthdb/plinth/internal/watchcheck"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchProgressInterval is the members' --watch-progress-notify-interval:
// short, so that the watchers of the fault test get periodic progress
// notifications as well as the ones their clients request.
const watchProgressInterval = 500 * time.Millisecond

// faultWatch is the watch side of TestLinearizableUnderFaults: a
// watchcheck.Checker writing under w/ (puts, deletes, three-key
// transactions) while watchers follow it through every member (a client
// pinned to each, and one over all endpoints, which resumes on another
// member by itself when its member dies): from revision 1 and from a
// revision in the middle of the faults, with prev_kv or progress
// notifications, and resumers that move from member to member on purpose,
// from the revision after the last event or progress notification they got.
type faultWatch struct {
	ck    *watchcheck.Checker
	clis  []*clientv3.Client
	added chan struct{} // closed once the mid-run watchers are added
}

func startFaultWatch(t *testing.T, c *testmember.Cluster, seed int64) *faultWatch {
	t.Helper()
	var clis []*clientv3.Client
	for _, ep := range c.Endpoints() {
		clis = append(clis, client(t, ep))
	}
	clis = append(clis, client(t, c.Endpoints()...))
	fw := &faultWatch{clis: clis, added: make(chan struct{})}
	// The default run writes a few thousand events; a longer one (make
	// test-faults) writes more slowly, so that what every watcher keeps
	// for the checks stays about that size.
	pace := 10 * time.Millisecond * time.Duration(max(1, *durationFlag/(15*time.Second)))
	fw.ck = watchcheck.Start(clis, watchcheck.Config{
		Prefix: "w/", Writers: 2, Pace: pace,
		Hop: time.Second, ProgressEvery: 700 * time.Millisecond, Seed: uint64(seed),
	})
	t.Cleanup(fw.ck.Close)
	go func() {
		defer close(fw.added)
		// Watchers from a recent past, a few seconds into the faults.
		select {
		case <-t.Context().Done():
			return
		case <-time.After(3 * time.Second):
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		resp, err := clis[len(clis)-1].Get(ctx, "w/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return // the watchers from revision 1 are checked all the same
		}
		fw.ck.AddFrom(max(1, resp.Header.Revision-50))
	}()
	return fw
}

// check stops the load once every member runs again, reads the history of
// w/ from each member's event index (they must all hold the same), checks
// it against ranges at revisions along it, and checks every watcher against
// it.
func (fw *faultWatch) check(ctx context.Context, t *testing.T, c *testmember.Cluster) {
	t.Helper()
	<-fw.added
	start := time.Now()
	end, err := fw.ck.Stop(ctx, fw.clis[len(fw.clis)-1])
	if err != nil {
		t.Fatal(err)
	}
	var history []*mvccpb.Event
	var errs []string
	for i, m := range c.Members {
		cli := fw.clis[i]
		if err := waitRevision(ctx, cli, end); err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
		h, err := watchcheck.History(ctx, cli, "w/", end)
		if err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
		if i == 0 {
			history = h
			errs = append(errs, watchcheck.Replay(ctx, cli, "w/", h, end, 200)...)
			continue
		}
		if d := watchcheck.Diff(history, h); d != "" {
			errs = append(errs, fmt.Sprintf("the event index of %s differs from %s's: %s", m.Name(), c.Members[0].Name(), d))
		}
	}
	report(t, "history of w/", errs)
	errs, summary := fw.ck.Check(history, time.Minute)
	t.Logf("watch: %s; checked in %v", summary, time.Since(start).Round(time.Millisecond))
	report(t, "watchers", errs)
}
