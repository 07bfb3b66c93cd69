package watch

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/storage"
)

// member is a store and its hub, written to as the apply loop does: one
// batch committed, then the hub notified.
type member struct {
	t     *testing.T
	store *mvcc.Store
	hub   *Hub
}

func newMember(t *testing.T, cfg Config) *member {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := storage.Open(t.TempDir(), logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	store, err := mvcc.Open(db, logger)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = logger
	m := &member{t: t, store: store, hub: NewHub(store, cfg)}
	t.Cleanup(func() {
		m.hub.Close()
		store.Close()
		_ = db.Close()
	})
	return m
}

func (m *member) write(fn func(b *mvcc.Batch) error) {
	m.t.Helper()
	b := m.store.NewBatch()
	if err := fn(b); err != nil {
		b.Abort()
		m.t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		m.t.Fatal(err)
	}
	m.hub.Notify()
}

func noLeases(int64) bool { return false }

func (m *member) put(key, value string) {
	m.t.Helper()
	m.write(func(b *mvcc.Batch) error {
		_, err := b.Put(&pb.PutRequest{Key: []byte(key), Value: []byte(value)}, noLeases)
		return err
	})
}

func (m *member) del(key string) {
	m.t.Helper()
	m.write(func(b *mvcc.Batch) error {
		_, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(key)})
		return err
	})
}

// client runs a stream as the API does, with responses going to a channel
// that the test reads; block, when not nil, holds each send until it is
// closed (a client that stops reading).
type client struct {
	t      *testing.T
	s      *Stream
	resps  chan *pb.WatchResponse
	runErr atomic.Value // what Run returned, once it has
}

func (m *member) client(block <-chan struct{}) *client {
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{t: m.t, s: m.hub.NewStream(), resps: make(chan *pb.WatchResponse, 100000)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := c.s.Run(ctx, func(r *pb.WatchResponse) error {
			if block != nil {
				select {
				case <-block:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			c.resps <- r
			return nil
		})
		c.runErr.Store(fmt.Sprint(err))
	}()
	m.t.Cleanup(func() {
		cancel()
		wg.Wait()
		c.s.Close()
	})
	return c
}

func (c *client) send(req *pb.WatchRequest) { c.s.Requests() <- req }

func (c *client) create(cr *pb.WatchCreateRequest) {
	c.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}})
}

func (c *client) next() *pb.WatchResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case <-time.After(20 * time.Second):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		c.t.Fatalf("no watch response in 20s (Run returned: %v)\n%s", c.runErr.Load(), buf)
		return nil
	}
}

func (c *client) none(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected response %v", r)
	case <-time.After(d):
	}
}

// events reads responses until it has n events, checking that each response
// is for watcher id and that no revision is split across responses.
func (c *client) events(id int64, n int) []*mvccpb.Event {
	c.t.Helper()
	var out []*mvccpb.Event
	for len(out) < n {
		r := c.next()
		if r.WatchId != id || len(r.Events) == 0 {
			c.t.Fatalf("want events of watcher %d, got %v", id, r)
		}
		if len(out) > 0 && out[len(out)-1].Kv.ModRevision == r.Events[0].Kv.ModRevision {
			c.t.Fatalf("revision %d split across responses", r.Events[0].Kv.ModRevision)
		}
		out = append(out, r.Events...)
	}
	if len(out) != n {
		c.t.Fatalf("got %d events, want %d", len(out), n)
	}
	return out
}

func evString(ev *mvccpb.Event) string {
	s := fmt.Sprintf("%s %s=%s@%d", ev.Type, ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision)
	if ev.PrevKv != nil {
		s += fmt.Sprintf(" prev %s@%d", ev.PrevKv.Value, ev.PrevKv.ModRevision)
	}
	return s
}

func checkEvs(t *testing.T, got []*mvccpb.Event, want ...string) {
	t.Helper()
	var g []string
	for _, ev := range got {
		g = append(g, evString(ev))
	}
	if fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("events:\n got %q\nwant %q", g, want)
	}
}

func TestWatchFromHistoryThenLive(t *testing.T) {
	m := newMember(t, Config{})
	m.put("a", "1") // 2
	m.put("b", "1") // 3
	m.put("a", "2") // 4
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 2, PrevKv: true})
	if r := c.next(); !r.Created || r.WatchId != 0 || r.Header.Revision != 4 {
		t.Fatalf("created: %v", r)
	}
	checkEvs(t, c.events(0, 2), "PUT a=1@2", "PUT a=2@4 prev 1@2")
	m.del("a") // 5
	m.put("c", "1")
	checkEvs(t, c.events(0, 1), "DELETE a=@5 prev 2@4")

	// A prefix watcher chosen by the client, with a filter, from now.
	c.create(&pb.WatchCreateRequest{WatchId: 7, Key: []byte("b"), RangeEnd: []byte("d"), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}})
	if r := c.next(); !r.Created || r.WatchId != 7 {
		t.Fatalf("created: %v", r)
	}
	m.del("b")
	m.put("c", "2")
	checkEvs(t, c.events(7, 1), "PUT c=2@8")

	// A duplicate ID and an empty range are refused as etcd refuses them.
	c.create(&pb.WatchCreateRequest{WatchId: 7, Key: []byte("x")})
	if r := c.next(); !r.Created || !r.Canceled || r.WatchId != -1 || r.CancelReason != ErrDuplicateID.Error() {
		t.Fatalf("duplicate: %v", r)
	}
	c.create(&pb.WatchCreateRequest{Key: []byte("x"), RangeEnd: []byte("a")})
	if r := c.next(); !r.Created || !r.Canceled || r.CancelReason != ErrEmptyRange.Error() {
		t.Fatalf("empty range: %v", r)
	}
	// Cancel answers once; an unknown ID gets no answer.
	c.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 7}}})
	if r := c.next(); !r.Canceled || r.WatchId != 7 {
		t.Fatalf("cancel: %v", r)
	}
	c.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 7}}})
	m.put("c", "3")
	c.none(100 * time.Millisecond)
}

func TestWatchCompacted(t *testing.T) {
	m := newMember(t, Config{})
	for i := range 5 {
		m.put("k", fmt.Sprint(i)) // 2..6
	}
	m.write(func(b *mvcc.Batch) error { _, _, err := b.Compact(4); return err })
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 3})
	if r := c.next(); !r.Created {
		t.Fatalf("created: %v", r)
	}
	if r := c.next(); !r.Canceled || r.CompactRevision != 4 || len(r.Events) != 0 {
		t.Fatalf("compacted: %v", r)
	}
	// The compaction revision itself can still be watched from.
	c.create(&pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 4})
	c.next()
	checkEvs(t, c.events(1, 3), "PUT k=2@4", "PUT k=3@5", "PUT k=4@6")
}

// TestPastWatcherOnIdleStream: a watcher from the past, created on a stream
// whose watchers have all been sent everything, is served at once, with no
// new write to wake the stream: a stream skips its rounds while nothing can
// have changed, and a create from the past is such a change.
func TestPastWatcherOnIdleStream(t *testing.T) {
	m := newMember(t, Config{})
	m.put("a", "1") // 2
	m.put("b", "1") // 3
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("z")})
	c.next()
	// Let the stream find that watcher up to date and go idle.
	time.Sleep(100 * time.Millisecond)
	c.create(&pb.WatchCreateRequest{Key: []byte("a"), RangeEnd: []byte("c"), StartRevision: 2})
	if r := c.next(); !r.Created || r.WatchId != 1 {
		t.Fatalf("created: %v", r)
	}
	checkEvs(t, c.events(1, 2), "PUT a=1@2", "PUT b=1@3")
	// An open range (etcd's range end "\x00") and a single key, from now.
	c.create(&pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte{0}})
	c.next()
	m.put("a", "2") // 4: watcher 1 only
	checkEvs(t, c.events(1, 1), "PUT a=2@4")
	m.put("y", "1") // 5: watcher 2 only
	checkEvs(t, c.events(2, 1), "PUT y=1@5")
	m.put("z", "1") // 6: watchers 0 and 2, in ID order
	checkEvs(t, c.events(0, 1), "PUT z=1@6")
	checkEvs(t, c.events(2, 1), "PUT z=1@6")
}

// TestSlowClient: a client that stops reading holds up neither writes nor
// other clients, the ring stays bounded, and once it reads again it gets
// every event in order, caught up from the store.
func TestSlowClient(t *testing.T) {
	const ring, writes = 32, 600
	// Small responses too: catch-up comes in many, cut at revisions.
	m := newMember(t, Config{RingEvents: ring, MaxResponseBytes: 2048})
	block := make(chan struct{})
	slow := m.client(block)
	fast := m.client(nil)
	// From revision 2: the slow stream may take its create after the
	// writes, and a watcher from "now" would then have nothing to get.
	slow.create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l"), StartRevision: 2})
	fast.create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l"), StartRevision: 2})
	if r := fast.next(); !r.Created {
		t.Fatal(r)
	}
	for i := range writes {
		m.put(fmt.Sprintf("k%03d", i%50), fmt.Sprint(i))
	}
	evs := fast.events(0, writes)
	for i, ev := range evs {
		if ev.Kv.ModRevision != int64(i+2) {
			t.Fatalf("event %d at revision %d", i, ev.Kv.ModRevision)
		}
	}
	m.hub.mu.RLock()
	held := m.hub.ringEvents
	m.hub.mu.RUnlock()
	if held > ring {
		t.Fatalf("ring holds %d events, bound %d", held, ring)
	}
	close(block)
	if r := slow.next(); !r.Created {
		t.Fatal(r)
	}
	evs = slow.events(0, writes)
	for i, ev := range evs {
		if ev.Kv.ModRevision != int64(i+2) {
			t.Fatalf("slow: event %d at revision %d", i, ev.Kv.ModRevision)
		}
	}
}

// TestProgressRequest: the answer waits until every watcher of the stream
// has been sent everything up to the revision the request found.
func TestProgressRequest(t *testing.T) {
	m := newMember(t, Config{RingEvents: 8})
	for i := range 100 {
		m.put("k", fmt.Sprint(i)) // 2..101
	}
	block := make(chan struct{})
	c := m.client(block)
	c.create(&pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 2})
	c.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
	close(block)
	c.next() // created
	got := 0
	for {
		r := c.next()
		if len(r.Events) > 0 {
			got += len(r.Events)
			continue
		}
		if r.WatchId != InvalidWatchID || r.Header.Revision != 101 || got != 100 {
			t.Fatalf("progress %v after %d events", r, got)
		}
		break
	}
	// With nothing pending, the answer comes at once.
	c.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
	if r := c.next(); r.WatchId != InvalidWatchID || r.Header.Revision != 101 {
		t.Fatalf("progress: %v", r)
	}
}

func TestPeriodicProgress(t *testing.T) {
	m := newMember(t, Config{ProgressInterval: 50 * time.Millisecond})
	m.put("a", "1")
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("k"), ProgressNotify: true})
	c.next()
	r := c.next()
	if r.WatchId != 0 || len(r.Events) != 0 || r.Header.Revision != 2 {
		t.Fatalf("progress: %v", r)
	}
}

func TestFragment(t *testing.T) {
	m := newMember(t, Config{MaxResponseBytes: 1000})
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l"), Fragment: true})
	c.next()
	m.write(func(b *mvcc.Batch) error {
		var ops []*pb.RequestOp
		for i := range 10 {
			ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: fmt.Appendf(nil, "k%d", i), Value: make([]byte, 300)}}})
		}
		_, err := b.Txn(&pb.TxnRequest{Success: ops}, noLeases)
		return err
	})
	n := 0
	for n < 10 {
		r := c.next()
		n += len(r.Events)
		if r.Fragment != (n < 10) {
			t.Fatalf("fragment flag %v after %d events", r.Fragment, n)
		}
	}
}

// TestCompactionKeepsSyncedWatchers: a watcher in sync that has not yet been
// sent the newest revisions when a compaction passes them still gets them
// from the ring, as etcd's synced watchers do; one catching up from before
// the compaction is canceled.
func TestCompactionKeepsSyncedWatchers(t *testing.T) {
	m := newMember(t, Config{})
	m.put("k", "0") // 2
	block := make(chan struct{})
	c := m.client(block)
	c.create(&pb.WatchCreateRequest{Key: []byte("k")})
	// Let the stream take the create (it then waits to send Created).
	deadline := time.Now().Add(10 * time.Second)
	for len(c.s.in) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	m.put("k", "1") // 3
	m.put("k", "2") // 4
	// The hub reads them into the ring before the compaction: a
	// compaction that overtakes the hub itself cancels in-sync watchers
	// too (the ring then restarts at the compaction revision).
	for time.Now().Before(deadline) {
		if _, next := m.hub.state(); next == 5 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	m.write(func(b *mvcc.Batch) error { _, _, err := b.Compact(4); return err })
	c.create(&pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 2})
	close(block)
	got := map[int64][]string{}
	canceled := map[int64]int64{}
	for len(got[0]) < 2 || canceled[1] == 0 {
		r := c.next()
		if r.Created {
			continue
		}
		if r.Canceled {
			canceled[r.WatchId] = r.CompactRevision
			continue
		}
		for _, ev := range r.Events {
			got[r.WatchId] = append(got[r.WatchId], evString(ev))
		}
	}
	if fmt.Sprint(got[0]) != fmt.Sprint([]string{"PUT k=1@3", "PUT k=2@4"}) || canceled[0] != 0 {
		t.Fatalf("synced watcher: %q, canceled at %d", got[0], canceled[0])
	}
	if canceled[1] != 4 {
		t.Fatalf("watcher from 2: canceled at %d, want compact revision 4", canceled[1])
	}
}

// TestCompactionOvertakingTheHub: a compaction applied before the hub has
// read the revisions it covers (the hub is told of the writes only after
// it) takes nothing from a watcher in sync: it gets every event, values
// included, and is not canceled; the compaction finishes once the hub has
// read past it.
func TestCompactionOvertakingTheHub(t *testing.T) {
	m := newMember(t, Config{})
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	if r := c.next(); !r.Created {
		t.Fatalf("first response %v, want created", r)
	}
	// Writes the hub is not told of, as when it lags the apply loop.
	quiet := func(fn func(b *mvcc.Batch) error) {
		b := m.store.NewBatch()
		if err := fn(b); err != nil {
			b.Abort()
			t.Fatal(err)
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	for i := range 20 {
		key, value := fmt.Sprintf("k%d", i%3), fmt.Sprint(i)
		quiet(func(b *mvcc.Batch) error {
			_, err := b.Put(&pb.PutRequest{Key: []byte(key), Value: []byte(value)}, noLeases)
			return err
		})
		want = append(want, fmt.Sprintf("PUT %s=%s@%d", key, value, i+2))
	}
	var done <-chan struct{}
	quiet(func(b *mvcc.Batch) error {
		var err error
		_, done, err = b.Compact(21)
		return err
	})
	m.hub.Notify()
	var got []string
	for len(got) < len(want) {
		r := c.next()
		if r.Canceled {
			t.Fatalf("watcher in sync canceled (compact revision %d) after %q", r.CompactRevision, got)
		}
		for _, ev := range r.Events {
			got = append(got, evString(ev))
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the compaction did not finish after the hub read past it")
	}
}

// TestWatcherCounts: the hub counts open streams and their watchers (the
// etcd_debugging_mvcc_watch_stream_total and watcher_total gauges): a
// cancel takes its watcher away, and a closed stream all of its own.
func TestWatcherCounts(t *testing.T) {
	m := newMember(t, Config{})
	a, b := m.client(nil), m.client(nil)
	a.create(&pb.WatchCreateRequest{Key: []byte("x")})
	first := a.next().WatchId
	a.create(&pb.WatchCreateRequest{Key: []byte("y")})
	a.next()
	b.create(&pb.WatchCreateRequest{Key: []byte("z")})
	b.next()
	if s, w := m.hub.Streams(), m.hub.Watchers(); s != 2 || w != 3 {
		t.Fatalf("%d streams, %d watchers; want 2 and 3", s, w)
	}
	a.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: first}}})
	if r := a.next(); !r.Canceled {
		t.Fatalf("cancel answered %v", r)
	}
	if w := m.hub.Watchers(); w != 2 {
		t.Fatalf("%d watchers after a cancel, want 2", w)
	}
	// A stream holding a watcher (set up as create leaves it) closes.
	s := m.hub.NewStream()
	s.watchers = append(s.watchers, watcher{id: 9})
	m.hub.watchers.Add(1)
	m.hub.catching.Add(1)
	s.Close()
	if s, w, c := m.hub.Streams(), m.hub.Watchers(), m.hub.CatchingUp(); s != 2 || w != 2 || c != 0 {
		t.Fatalf("after a stream closed: %d streams, %d watchers, %d catching up; want 2, 2, 0", s, w, c)
	}
}

// TestCatchingUpCounts: a watcher from the past counts as catching up (etcd's
// slow_watcher_total) until it has been sent what the ring holds, and every
// event sent is counted once (events_total).
func TestCatchingUpCounts(t *testing.T) {
	m := newMember(t, Config{})
	for i := range 5 {
		m.put("k", fmt.Sprint(i)) // revisions 2-6
	}
	block := make(chan struct{})
	c := m.client(block)
	c.create(&pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 2})
	deadline := time.Now().Add(10 * time.Second)
	for m.hub.CatchingUp() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d watchers catching up, want 1", m.hub.CatchingUp())
		}
		time.Sleep(time.Millisecond)
	}
	close(block)
	got := 0
	for got < 5 {
		got += len(c.next().Events)
	}
	m.put("k", "live") // 7
	for got < 6 {
		got += len(c.next().Events)
	}
	if n := m.hub.CatchingUp(); n != 0 {
		t.Fatalf("%d watchers catching up once in sync, want 0", n)
	}
	if n := m.hub.EventsSent(); n != 6 {
		t.Fatalf("%d events counted as sent, want 6", n)
	}
}

// A write alone is sent at once: the hold for bursts costs it nothing.
func TestWriteAloneNotHeld(t *testing.T) {
	const quiet = 2 * time.Second
	m := newMember(t, Config{BurstQuiet: quiet, BurstWait: time.Minute})
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("k")})
	c.next()
	for i := range 2 {
		if i > 0 {
			time.Sleep(quiet + quiet/10) // the first write is long past
		}
		start := time.Now()
		m.hub.NoteWrite()
		m.put("k", "v")
		r := c.next()
		if took := time.Since(start); took > quiet/2 || len(r.Events) != 1 {
			t.Fatalf("write %d alone: %v after %v, want its event at once", i, r, took)
		}
	}
}

// Writes that reach the member together are a burst: their events are held
// back until the writes pause, and reach a watcher in one response.
func TestBurstGathered(t *testing.T) {
	const quiet = time.Second
	m := newMember(t, Config{BurstQuiet: quiet, BurstWait: time.Minute})
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("k")})
	c.next()
	for range 3 {
		m.hub.NoteWrite() // three clients' writes arrive, then commit
	}
	start := time.Now()
	m.put("k", "1")
	m.put("k", "2")
	m.put("k", "3")
	c.none(quiet / 3)
	r := c.next()
	if took := time.Since(start); took < quiet/2 || len(r.Events) != 3 {
		t.Fatalf("burst: %v after %v, want its 3 events in one response after about %v", r, took, quiet)
	}
	checkEvs(t, r.Events, "PUT k=1@2", "PUT k=2@3", "PUT k=3@4")
}

// While writes are in flight, events are held back past the quiet period:
// the events of a burst reach a watcher in one response.
func TestWritesInFlightGathered(t *testing.T) {
	var inFlight atomic.Bool
	m := newMember(t, Config{WritesInFlight: inFlight.Load, BurstQuiet: 10 * time.Millisecond, BurstWait: time.Minute})
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("k")})
	created := c.next()
	if !created.Created {
		t.Fatalf("want the created response, got %v", created)
	}
	inFlight.Store(true)
	m.put("k", "1")
	m.put("k", "2")
	m.put("k", "3")
	c.none(200 * time.Millisecond)
	inFlight.Store(false)
	m.put("k", "4")
	r := c.next()
	if len(r.Events) != 4 {
		t.Fatalf("want the burst's 4 events in one response, got %v", r)
	}
	checkEvs(t, r.Events, "PUT k=1@2", "PUT k=2@3", "PUT k=3@4", "PUT k=4@5")
}

// The hold is bounded: writes that never commit (a leader that lost its
// quorum), or that never pause, hold events back no longer than BurstWait.
func TestBurstWaitBounded(t *testing.T) {
	const wait = 100 * time.Millisecond
	m := newMember(t, Config{WritesInFlight: func() bool { return true }, BurstQuiet: time.Millisecond, BurstWait: wait})
	c := m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("k")})
	c.next()
	start := time.Now()
	m.put("k", "1")
	r := c.next()
	if took := time.Since(start); took < wait/2 || len(r.Events) != 1 {
		t.Fatalf("with writes always in flight: %v after %v, want the event after about %v", r, took, wait)
	}
}

// cutAt's shortcut, a bound from the keys' and values' lengths, never keeps
// a response whole that the exact sizes would cut: the bound is never below
// the encoding, even with every varint at its longest.
func TestCutBoundNeverBelowSize(t *testing.T) {
	kv := &mvccpb.KeyValue{Key: []byte("k"), Value: []byte("v"), CreateRevision: -1, ModRevision: -1, Version: -1, Lease: -1}
	if size, bound := proto.Size(kv), len(kv.Key)+len(kv.Value)+maxKeyValueOverhead; size > bound {
		t.Fatalf("a KeyValue with the longest varints encodes in %d bytes, above its bound %d", size, bound)
	}
	// Events of revisions 1..6, two a revision, 100 bytes of value each: a
	// limit of 250 bytes cuts after revision 2 (the first boundary past it).
	var evs []*mvccpb.Event
	for i := range 12 {
		evs = append(evs, &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: []byte{'a' + byte(i)}, Value: make([]byte, 100), ModRevision: int64(i/2 + 1)}})
	}
	if got, next := cutAt(evs, 7, 250); len(got) != 4 || next != 3 {
		t.Fatalf("cut at 250 bytes: %d events, next %d; want 4 events, next 3", len(got), next)
	}
	if got, next := cutAt(evs, 7, 1<<20); len(got) != 12 || next != 7 {
		t.Fatalf("cut at 1 MiB: %d events, next %d; want all 12, next 7", len(got), next)
	}
}

// A stream that has just sent many responses paces its next round: the
// writes that commit meanwhile reach each watcher in one response, once the
// pause is over. One that sent a single response waits next to nothing.
func TestStreamPaced(t *testing.T) {
	const watchers, per = 10, 100 * time.Millisecond // a round of 10 responses: a pause of 1 s
	m := newMember(t, Config{BurstQuiet: time.Nanosecond, BurstWait: time.Nanosecond, PacePerResponse: per, MaxPace: time.Minute})
	c := m.client(nil)
	for range watchers {
		c.create(&pb.WatchCreateRequest{Key: []byte("k")})
		c.next()
	}
	m.put("k", "1")
	for range watchers {
		if r := c.next(); len(r.Events) != 1 {
			t.Fatalf("first round: %v, want one event", r)
		}
	}
	// The pause begins when the stream finds its watchers with nothing
	// more to send. Writes committed before it looks are sent at once, with
	// no pause (the test's one failure: both events within 10 ms). A
	// progress request is answered only after that look, so waiting for
	// its answer puts the writes after it.
	c.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
	if r := c.next(); len(r.Events) != 0 || r.WatchId != InvalidWatchID {
		t.Fatalf("progress after the first round: %v", r)
	}
	start := time.Now()
	m.put("k", "2")
	m.put("k", "3")
	c.none(watchers * per / 2)
	for range watchers {
		r := c.next()
		checkEvs(t, r.Events, "PUT k=2@3", "PUT k=3@4")
	}
	if took := time.Since(start); took < watchers*per*3/4 {
		t.Fatalf("paced round after %v, want about %v", took, watchers*per)
	}

	// One watcher: a round of one response pauses the stream for per.
	c = m.client(nil)
	c.create(&pb.WatchCreateRequest{Key: []byte("j")})
	c.next()
	m.put("j", "1")
	c.next()
	time.Sleep(per) // the pause is over
	start = time.Now()
	m.put("j", "2")
	if r := c.next(); len(r.Events) != 1 || time.Since(start) > per/2 {
		t.Fatalf("a stream past its pause: %v after %v, want the event at once", r, time.Since(start))
	}
}
