package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/watchcheck"
)

func evLine(ev *clientv3.Event) string {
	s := fmt.Sprintf("%s %s=%s@%d", ev.Type, ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision)
	if ev.PrevKv != nil {
		s += fmt.Sprintf(" prev %s@%d", ev.PrevKv.Value, ev.PrevKv.ModRevision)
	}
	return s
}

// nextEvents reads watch responses until it has n events.
func nextEvents(t *testing.T, wch clientv3.WatchChan, n int) []string {
	t.Helper()
	var out []string
	timeout := time.After(20 * time.Second)
	for len(out) < n {
		select {
		case r, ok := <-wch:
			if !ok {
				t.Fatalf("watch channel closed after %q", out)
			}
			if err := r.Err(); err != nil {
				t.Fatalf("watch: %v", err)
			}
			for _, ev := range r.Events {
				out = append(out, evLine(ev))
			}
		case <-timeout:
			t.Fatalf("after 20s, %d events of %d: %q", len(out), n, out)
		}
	}
	return out
}

func TestWatchWithEtcdClient(t *testing.T) {
	_, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, kv := range [][2]string{{"a", "1"}, {"b/1", "1"}, {"b/2", "1"}, {"a", "2"}} {
		if _, err := cli.Put(ctx, kv[0], kv[1]); err != nil { // 2..5
			t.Fatal(err)
		}
	}
	hist := cli.Watch(ctx, "a", clientv3.WithRev(2), clientv3.WithPrevKV())
	prefix := cli.Watch(ctx, "b/", clientv3.WithPrefix(), clientv3.WithRev(1))
	fromKey := cli.Watch(ctx, "b/2", clientv3.WithFromKey(), clientv3.WithFilterPut(), clientv3.WithRev(5))
	if got, want := fmt.Sprint(nextEvents(t, hist, 2)), fmt.Sprint([]string{"PUT a=1@2", "PUT a=2@5 prev 1@2"}); got != want {
		t.Fatalf("history of a: %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(nextEvents(t, prefix, 2)), fmt.Sprint([]string{"PUT b/1=1@3", "PUT b/2=1@4"}); got != want {
		t.Fatalf("prefix b/: %s, want %s", got, want)
	}
	// One transaction: its events in one response, in operation order.
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut("b/3", "1"), clientv3.OpDelete("b/", clientv3.WithFromKey()), clientv3.OpPut("z", "1")).Commit(); err != nil {
		t.Fatal(err) // 6: b/3 is put, then deleted with b/1 and b/2, before z is put
	}
	select {
	case r := <-prefix:
		var got []string
		for _, ev := range r.Events {
			got = append(got, evLine(ev))
		}
		want := []string{"PUT b/3=1@6", "DELETE b/1=@6", "DELETE b/2=@6", "DELETE b/3=@6"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("txn events %q, want %q in one response", got, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no txn events")
	}
	if got, want := fmt.Sprint(nextEvents(t, fromKey, 2)), fmt.Sprint([]string{"DELETE b/2=@6", "DELETE b/3=@6"}); got != want {
		t.Fatalf("from b/2 without puts: %s, want %s", got, want)
	}
	if _, err := cli.Put(ctx, "a", "3"); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(nextEvents(t, hist, 1)), fmt.Sprint([]string{"PUT a=3@7 prev 2@5"}); got != want {
		t.Fatalf("a live: %s, want %s", got, want)
	}

	// A watch from a compacted revision fails with the compaction
	// revision, and its channel closes.
	if _, err := cli.Compact(ctx, 5); err != nil {
		t.Fatal(err)
	}
	compacted := cli.Watch(ctx, "a", clientv3.WithRev(3))
	select {
	case r := <-compacted:
		if r.Err() != rpctypes.ErrCompacted || r.CompactRevision != 5 || !r.Canceled {
			t.Fatalf("watch from a compacted revision: %+v (err %v)", r, r.Err())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no answer to a watch from a compacted revision")
	}
	if _, ok := <-compacted; ok {
		t.Fatal("compacted watch channel still open")
	}

	// RequestProgress answers with the current revision, every watcher
	// of the stream being in sync.
	if err := cli.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		r := <-hist
		if r.IsProgressNotify() {
			if r.Header.Revision != 7 {
				t.Fatalf("progress at %d, want 7", r.Header.Revision)
			}
			break
		}
	}
}

// committedEvents reads the store's event index from revision 1 on: the
// committed history the watchers are checked against.
func committedEvents(t *testing.T, kv *mvcc.Store) []*mvccpb.Event {
	t.Helper()
	var out []*mvccpb.Event
	for from := int64(1); from <= kv.Rev(); {
		evs, next, err := kv.Events(from, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		out, from = append(out, evs...), next
	}
	return out
}

// runChecker runs a watchcheck.Checker through clis (several watchers per
// stream, several streams, watchers from revision 1 and from the middle of
// the load, resumers hopping between clients, progress requests); mid, when
// not nil, runs halfway (a leader change). Every watcher is then checked
// against the committed history of member kv.
func runChecker(t *testing.T, clis []*clientv3.Client, kv func() *mvcc.Store, mid func()) {
	ck := watchcheck.Start(clis, watchcheck.Config{Prefix: "w/", Writers: 4, Hop: 50 * time.Millisecond, ProgressEvery: 100 * time.Millisecond})
	defer ck.Close()
	time.Sleep(300 * time.Millisecond)
	ck.AddFrom(kv().Rev())
	if mid != nil {
		mid()
	}
	// At least half a second more, and 100 revisions in all: a loaded
	// machine writes slowly.
	time.Sleep(500 * time.Millisecond)
	for deadline := time.Now().Add(20 * time.Second); kv().Rev() < 100 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	end, err := ck.Stop(context.Background(), clis[0])
	if err != nil {
		t.Fatal(err)
	}
	for kv().Rev() < end {
		time.Sleep(10 * time.Millisecond)
	}
	history := committedEvents(t, kv())
	if len(history) < 20 {
		t.Fatalf("only %d events written", len(history))
	}
	errs, summary := ck.Check(history, 30*time.Second)
	t.Log(summary)
	if len(errs) > 0 {
		t.Fatalf("%d violations:\n%s", len(errs), strings.Join(errs[:min(len(errs), 30)], "\n"))
	}
}

func TestWatchChecker(t *testing.T) {
	srv, cli := startServer(t, t.TempDir())
	others := []*clientv3.Client{cli}
	for range 2 {
		c, err := clientv3.New(clientv3.Config{Endpoints: cli.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		others = append(others, c)
	}
	runChecker(t, others, func() *mvcc.Store { return srv.KV() }, nil)
}

// TestWatchClusterChecker runs the checker on three members, with watchers
// on followers and the leader and resumes on other members, across a leader
// change; every member's event index then holds the same history.
func TestWatchClusterChecker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "watch-checker")
	lead := c.leader(ctx)
	clis := []*clientv3.Client{c.client(0), c.client(1), c.client(2)}
	moveLeader := func() {
		// The leader may have changed by itself on a loaded machine:
		// move it from whichever member leads now.
		for attempt := 1; ; attempt++ {
			from := c.leader(ctx)
			_, err := c.client(from).MoveLeader(ctx, c.servers[(from+1)%3].memberID)
			if err == nil {
				return
			}
			if attempt == 5 {
				t.Fatalf("move leader: %v", err)
			}
		}
	}
	runChecker(t, clis, func() *mvcc.Store { return c.servers[(lead+2)%3].KV() }, moveLeader)

	rev := c.servers[0].KV().Rev()
	waitFor(ctx, t, func() bool { return c.servers[1].KV().Rev() >= rev && c.servers[2].KV().Rev() >= rev })
	want := committedEvents(t, c.servers[0].KV())
	for i := 1; i < 3; i++ {
		got := committedEvents(t, c.servers[i].KV())
		if len(got) < len(want) {
			t.Fatalf("member %d has %d events, member 0 %d", i, len(got), len(want))
		}
		for j := range want {
			if evLine((*clientv3.Event)(got[j])) != evLine((*clientv3.Event)(want[j])) {
				t.Fatalf("member %d event %d is %v, member 0 has %v", i, j, got[j], want[j])
			}
		}
	}
}

// TestWatchClientThatStopsReading: a raw Watch stream that stops reading
// holds up neither writes nor another client's watcher; gRPC's flow control
// stops the server sending to it, and when it reads again it gets every
// event in order.
func TestWatchClientThatStopsReading(t *testing.T) {
	srv, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(srv.ClientAddrs()[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stalled, err := etcdserverpb.NewWatchClient(conn).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	create := &etcdserverpb.WatchRequest{RequestUnion: &etcdserverpb.WatchRequest_CreateRequest{
		CreateRequest: &etcdserverpb.WatchCreateRequest{Key: []byte("s/"), RangeEnd: []byte("s0"), StartRevision: 2}}}
	if err := stalled.Send(create); err != nil {
		t.Fatal(err)
	}
	other := cli.Watch(ctx, "s/", clientv3.WithPrefix(), clientv3.WithRev(2))

	// 4.8 MiB of events: more than one response may hold, and than
	// gRPC's initial windows.
	const writes = 600
	value := strings.Repeat("v", 8<<10)
	for i := range writes {
		if _, err := cli.Put(ctx, fmt.Sprintf("s/%04d", i%100), value); err != nil {
			t.Fatalf("put %d with a stalled watcher: %v", i, err)
		}
	}
	if got := len(nextEvents(t, other, writes)); got != writes {
		t.Fatalf("other watcher got %d events", got)
	}
	// Now read the stalled stream: created, then every event in order.
	next := int64(2)
	for next < writes+2 {
		r, err := stalled.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range r.Events {
			if ev.Kv.ModRevision != next {
				t.Fatalf("stalled watcher: event at %d, want %d", ev.Kv.ModRevision, next)
			}
			next++
		}
	}
}

// TestWatchAcrossSnapshotInstall: a watcher on a member that catches up by
// installing a Raft snapshot gets every change it missed, from the event
// index the snapshot carried, then live ones.
func TestWatchAcrossSnapshotInstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 3, "watch-snapshot")
	for i := range 3 {
		c.cfgs[i].SnapshotCount = 20
		c.start(i)
	}
	lead := c.leader(ctx)
	lagging := (lead + 1) % 3
	cli := c.client(lead)
	if _, err := cli.Put(ctx, "x/before", "1"); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, func() bool { return c.servers[lagging].node.AppliedIndex() >= c.servers[lead].node.AppliedIndex() })
	// Whether the watch below starts before the install or after it, the
	// changes from here on reach the member only in the snapshot.
	from := c.servers[lagging].KV().Rev() + 1
	c.stop(lagging)
	for i := range 150 {
		if _, err := cli.Put(ctx, fmt.Sprintf("x/%03d", i%40), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Delete(ctx, "x/01", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	c.start(lagging)
	rec := &watchcheck.Recorder{}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	spec := watchcheck.Spec{Key: "x/", End: "x0", Opts: []clientv3.OpOption{clientv3.WithPrefix()}}
	go rec.Follow(spec.Watch(wctx, c.client(lagging), from), nil)
	waitFor(ctx, t, func() bool { return c.servers[lagging].node.SnapshotsInstalled() > 0 })
	if _, err := cli.Put(ctx, "x/after", "1"); err != nil {
		t.Fatal(err)
	}
	history := committedEvents(t, c.servers[lead].KV())
	watchcheck.Wait(rec.Events, watchcheck.Want(spec, history, from), 30*time.Second)
	if errs := watchcheck.Check("watcher on the lagging member", spec, rec, history, from); len(errs) > 0 {
		t.Fatal(strings.Join(errs, "\n"))
	}
}

// TestWatchRequireLeader: a watch that requires a leader (as Kubernetes'
// do) ends with etcd's "no leader" once its member has lost the leader,
// instead of waiting for events that cannot come.
func TestWatchRequireLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "watch-leader")
	lead := c.leader(ctx)
	alone := (lead + 1) % 3
	wch := c.client(alone).Watch(clientv3.WithRequireLeader(ctx), "k")
	if _, err := c.client(lead).Put(ctx, "k", "1"); err != nil {
		t.Fatal(err)
	}
	if got := nextEvents(t, wch, 1); len(got) != 1 {
		t.Fatal(got)
	}
	for i := range 3 {
		if i != alone {
			c.stop(i)
		}
	}
	select {
	case r := <-wch:
		if r.Err() != rpctypes.ErrNoLeader {
			t.Fatalf("watch on a member without a leader: %v (%+v)", r.Err(), r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the watch did not end in 30s without a leader")
	}
}
