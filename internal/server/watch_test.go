package server

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
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

// writeLoad runs writers of puts, deletes and transactions on keys under w/
// until ctx ends, through the clients given.
func writeLoad(ctx context.Context, clis []*clientv3.Client, writers int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			cli := clis[w%len(clis)]
			for i := 0; ctx.Err() == nil; i++ {
				key := func() string { return fmt.Sprintf("w/k%02d", r.IntN(20)) }
				val := fmt.Sprintf("%d.%d", w, i)
				octx, cancel := context.WithTimeout(ctx, 5*time.Second)
				switch r.IntN(10) {
				case 0:
					_, _ = cli.Delete(octx, fmt.Sprintf("w/k%d", r.IntN(2)), clientv3.WithPrefix())
				case 1, 2:
					a, b := r.IntN(20), r.IntN(20)
					if a == b {
						b = (a + 1) % 20
					}
					c := (b + 1) % 20
					if c == a {
						c = (c + 1) % 20
					}
					_, _ = cli.Txn(octx).Then(
						clientv3.OpPut(fmt.Sprintf("w/k%02d", a), val),
						clientv3.OpDelete(fmt.Sprintf("w/k%02d", c)),
						clientv3.OpPut(fmt.Sprintf("w/k%02d", b), val),
					).Commit()
				default:
					_, _ = cli.Put(octx, key(), val)
				}
				cancel()
			}
		}()
	}
	return &wg
}

// watchSpec is one watcher of the checker: a range, and the member whose
// client it watches through (resumes go to the next member).
type watchSpec struct {
	key  string
	opts []clientv3.OpOption
	span [2]string // [key, end) for matching; end "" = key alone, "\x00" = from key
}

var checkerWatches = []watchSpec{
	{"w/", []clientv3.OpOption{clientv3.WithPrefix()}, [2]string{"w/", "w0"}},
	{"w/k1", []clientv3.OpOption{clientv3.WithPrefix()}, [2]string{"w/k1", "w/k2"}},
	{"w/k05", nil, [2]string{"w/k05", ""}},
	{"w/k10", []clientv3.OpOption{clientv3.WithFromKey()}, [2]string{"w/k10", "\x00"}},
	{"w/k03", []clientv3.OpOption{clientv3.WithRange("w/k12")}, [2]string{"w/k03", "w/k12"}},
}

func (w watchSpec) match(key string) bool {
	switch w.span[1] {
	case "":
		return key == w.span[0]
	case "\x00":
		return key >= w.span[0]
	}
	return key >= w.span[0] && key < w.span[1]
}

// received is what one checked watcher got, response by response.
type received struct {
	mu    sync.Mutex
	resps [][]*mvccpb.Event
	err   error
}

func (r *received) events() []*mvccpb.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*mvccpb.Event
	for _, resp := range r.resps {
		out = append(out, resp...)
	}
	return out
}

// follow records the responses of wch into rec until it closes or fails;
// it returns the revision of the last event it recorded.
func follow(wch clientv3.WatchChan, rec *received) {
	for r := range wch {
		if err := r.Err(); err != nil {
			rec.mu.Lock()
			rec.err = err
			rec.mu.Unlock()
			return
		}
		if len(r.Events) == 0 {
			continue
		}
		evs := make([]*mvccpb.Event, len(r.Events))
		for i, ev := range r.Events {
			evs[i] = (*mvccpb.Event)(ev)
		}
		rec.mu.Lock()
		rec.resps = append(rec.resps, evs)
		rec.mu.Unlock()
	}
}

// checkWatcher checks one watcher's responses against the committed
// history from its start revision: ordered by revision, nothing duplicated
// or skipped, each revision in one response.
func checkWatcher(t *testing.T, name string, spec watchSpec, rec *received, history []*mvccpb.Event, start int64) {
	t.Helper()
	var want []*mvccpb.Event
	for _, ev := range history {
		if ev.Kv.ModRevision >= start && spec.match(string(ev.Kv.Key)) {
			want = append(want, ev)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(rec.events()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.err != nil {
		t.Fatalf("%s: watch failed: %v", name, rec.err)
	}
	seenIn := map[int64]int{} // revision -> response index
	var got []*mvccpb.Event
	for i, resp := range rec.resps {
		for _, ev := range resp {
			if r, ok := seenIn[ev.Kv.ModRevision]; ok && r != i {
				t.Fatalf("%s: revision %d split across responses %d and %d", name, ev.Kv.ModRevision, r, i)
			}
			seenIn[ev.Kv.ModRevision] = i
			if n := len(got); n > 0 && got[n-1].Kv.ModRevision > ev.Kv.ModRevision {
				t.Fatalf("%s: revision %d after %d", name, ev.Kv.ModRevision, got[n-1].Kv.ModRevision)
			}
			got = append(got, ev)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%s from %d: %d events, want %d", name, start, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Type != w.Type || string(g.Kv.Key) != string(w.Kv.Key) || string(g.Kv.Value) != string(w.Kv.Value) ||
			g.Kv.ModRevision != w.Kv.ModRevision || g.Kv.Version != w.Kv.Version || g.Kv.CreateRevision != w.Kv.CreateRevision {
			t.Fatalf("%s from %d: event %d is %v, want %v", name, start, i, g, w)
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

// runChecker watches through clis (several watchers per stream, several
// streams) while writers write, some watchers starting in the past and some
// being cut and resumed from their last revision + 1 on another client;
// mid, when not nil, runs halfway (a leader change). Every watcher is then
// checked against the committed history of member kv.
func runChecker(t *testing.T, clis []*clientv3.Client, kv func() *mvcc.Store, mid func()) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type checked struct {
		name  string
		spec  watchSpec
		rec   *received
		start int64
	}
	var all []*checked
	var followers sync.WaitGroup
	watch := func(name string, cli *clientv3.Client, spec watchSpec, start int64) *checked {
		c := &checked{name: name, spec: spec, rec: &received{}, start: start}
		wctx, wcancel := context.WithCancel(ctx)
		opts := append([]clientv3.OpOption{clientv3.WithRev(start)}, spec.opts...)
		wch := cli.Watch(wctx, spec.key, opts...)
		followers.Add(1)
		go func() { defer followers.Done(); defer wcancel(); follow(wch, c.rec) }()
		all = append(all, c)
		return c
	}
	for i, cli := range clis {
		for j, spec := range checkerWatches {
			watch(fmt.Sprintf("client %d watcher %d from 1", i, j), cli, spec, 1)
		}
	}
	load, stopLoad := context.WithCancel(ctx)
	writers := writeLoad(load, clis, 4)
	time.Sleep(300 * time.Millisecond)
	// Watchers from the present and from a recent past, mid-load.
	now := kv().Rev()
	for i, cli := range clis {
		for j, spec := range checkerWatches {
			watch(fmt.Sprintf("client %d watcher %d from %d", i, j, now), cli, spec, now)
		}
	}
	// Resumable: a watcher cut after a while resumes from the revision
	// after the last one it saw, through another client.
	type resumed struct {
		first, second *checked
	}
	var resumes []resumed
	for j, spec := range checkerWatches {
		rctx, rcancel := context.WithCancel(ctx)
		first := &checked{name: fmt.Sprintf("cut watcher %d", j), spec: spec, rec: &received{}, start: 1}
		wch := clis[0].Watch(rctx, spec.key, append([]clientv3.OpOption{clientv3.WithRev(1)}, spec.opts...)...)
		done := make(chan struct{})
		go func() { defer close(done); follow(wch, first.rec) }()
		time.Sleep(50 * time.Millisecond)
		rcancel()
		<-done
		last := int64(0)
		if evs := first.rec.events(); len(evs) > 0 {
			last = evs[len(evs)-1].Kv.ModRevision
		}
		second := watch(fmt.Sprintf("resumed watcher %d from %d", j, last+1), clis[(j+1)%len(clis)], spec, last+1)
		resumes = append(resumes, resumed{first, second})
	}
	if mid != nil {
		mid()
	}
	time.Sleep(500 * time.Millisecond)
	stopLoad()
	writers.Wait()
	// A write whose client gave up may still be applied: one more put,
	// applied after all of them, ends the history.
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	end, err := clis[0].Put(wctx, "w/end", "")
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	for kv().Rev() < end.Header.Revision {
		time.Sleep(10 * time.Millisecond)
	}
	history := committedEvents(t, kv())
	if len(history) < 20 {
		t.Fatalf("only %d events written", len(history))
	}
	t.Logf("%d events over %d revisions, %d watchers", len(history), kv().Rev(), len(all)+len(resumes))
	for _, c := range all {
		checkWatcher(t, c.name, c.spec, c.rec, history, c.start)
	}
	for _, r := range resumes {
		// The cut watcher's events and the resumed one's together are
		// the history from 1.
		joined := &received{resps: append(append([][]*mvccpb.Event(nil), r.first.rec.resps...), r.second.rec.resps...)}
		deadline := time.Now().Add(30 * time.Second)
		for {
			r.second.rec.mu.Lock()
			joined.resps = append(append([][]*mvccpb.Event(nil), r.first.rec.resps...), r.second.rec.resps...)
			r.second.rec.mu.Unlock()
			n := 0
			for _, ev := range history {
				if r.first.spec.match(string(ev.Kv.Key)) {
					n++
				}
			}
			if len(joined.events()) >= n || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		checkWatcher(t, r.first.name+" then "+r.second.name, r.first.spec, joined, history, 1)
	}
	cancel()
	followers.Wait()
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
	c := newTestCluster(t, 3, "watch-checker")
	for i := range 3 {
		c.start(i)
	}
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
	rec := &received{}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go follow(c.client(lagging).Watch(wctx, "x/", clientv3.WithPrefix(), clientv3.WithRev(from)), rec)
	waitFor(ctx, t, func() bool { return c.servers[lagging].node.SnapshotsInstalled() > 0 })
	if _, err := cli.Put(ctx, "x/after", "1"); err != nil {
		t.Fatal(err)
	}
	spec := watchSpec{span: [2]string{"x/", "x0"}}
	checkWatcher(t, "watcher on the lagging member", spec, rec, committedEvents(t, c.servers[lead].KV()), from)
}

// TestWatchRequireLeader: a watch that requires a leader (as Kubernetes'
// do) ends with etcd's "no leader" once its member has lost the leader,
// instead of waiting for events that cannot come.
func TestWatchRequireLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 3, "watch-leader")
	for i := range 3 {
		c.start(i)
	}
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
