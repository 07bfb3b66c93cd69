package watch

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func cancelRequest(id int64) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}
}

// TestWatcherIDsAgainstAModel creates and cancels watchers on one stream in
// a random order, with IDs of the client's choosing drawn from a small set
// (so that IDs are taken, freed and taken again, and the stream's
// tombstones and unsorted creates pile up and are merged) mixed with IDs of
// the server's choosing, and checks every answer against a model of the
// live IDs; then a put to every key shows that exactly the live watchers
// are there, each on its own key.
func TestWatcherIDsAgainstAModel(t *testing.T) {
	m := newMember(t, Config{})
	c := m.client(nil)
	rng := rand.New(rand.NewPCG(1, 2))
	live := map[int64]string{} // ID -> the key it watches
	var keys []string
	for op := range 5000 {
		switch id := rng.Int64N(400) + 1; rng.IntN(5) {
		case 0, 1: // a create with the client's ID
			key := fmt.Sprint("k/", op)
			keys = append(keys, key)
			c.create(&pb.WatchCreateRequest{Key: []byte(key), WatchId: id})
			r := c.next()
			if _, taken := live[id]; taken {
				if !r.Canceled || r.WatchId != InvalidWatchID {
					t.Fatalf("op %d: create with the live ID %d answered %v, want a refusal", op, id, r)
				}
				continue
			}
			if !r.Created || r.Canceled || r.WatchId != id {
				t.Fatalf("op %d: create with the free ID %d answered %v", op, id, r)
			}
			live[id] = key
		case 2: // a create with the server's ID
			key := fmt.Sprint("k/", op)
			keys = append(keys, key)
			c.create(&pb.WatchCreateRequest{Key: []byte(key)})
			r := c.next()
			if _, taken := live[r.WatchId]; !r.Created || r.Canceled || r.WatchId < 0 || taken {
				t.Fatalf("op %d: create answered %v (live: %d IDs)", op, r, len(live))
			}
			live[r.WatchId] = key
		default: // a cancel, of a live ID or not
			if rng.IntN(2) == 0 && len(live) > 0 {
				for live := range live {
					id = live
					break
				}
			}
			c.send(cancelRequest(id))
			if _, ok := live[id]; !ok {
				continue // no answer, which the next answer shows
			}
			if r := c.next(); !r.Canceled || r.WatchId != id {
				t.Fatalf("op %d: cancel of %d answered %v", op, id, r)
			}
			delete(live, id)
		}
	}
	if n := m.hub.Watchers(); n != int64(len(live)) {
		t.Fatalf("the hub counts %d watchers, the model %d", n, len(live))
	}
	for _, key := range keys {
		m.put(key, "v")
	}
	got := map[int64]string{}
	for len(got) < len(live) {
		r := c.next()
		if len(r.Events) != 1 {
			t.Fatalf("want one event per watcher, got %v", r)
		}
		key, ok := live[r.WatchId]
		if !ok || string(r.Events[0].Kv.Key) != key {
			t.Fatalf("watcher %d (live: %v, key %q) got %s", r.WatchId, ok, key, r.Events[0].Kv.Key)
		}
		if _, twice := got[r.WatchId]; twice {
			t.Fatalf("watcher %d got a second event", r.WatchId)
		}
		got[r.WatchId] = key
	}
	c.none(100 * time.Millisecond)
}

// BenchmarkCreateAndCancel creates 100,000 watchers on one stream, with IDs
// of the client's choosing in random order, then cancels them in ID order:
// the cost per watcher of both, which must not grow with the watchers a
// stream has.
func BenchmarkCreateAndCancel(b *testing.B) {
	const n = 100000
	t := &testing.T{}
	for b.Loop() {
		b.StopTimer()
		m := newMember(t, Config{})
		c := m.client(nil)
		ids := rand.Perm(n)
		b.StartTimer()
		go func() {
			for _, id := range ids {
				c.create(&pb.WatchCreateRequest{Key: []byte(fmt.Sprint("k", id)), WatchId: int64(id + 1)})
			}
			for id := range n {
				c.send(cancelRequest(int64(id + 1)))
			}
		}()
		for range 2 * n {
			c.next()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/watcher")
}

// BenchmarkRoundOfIdleWatchers measures a round of a stream holding 100,000
// watchers of keys that do not change, for one put to another key: the cost
// per put of a stream with many watchers, none of them interested.
func BenchmarkRoundOfIdleWatchers(b *testing.B) {
	const n = 100000
	m := newMember(&testing.T{}, Config{})
	c := m.client(nil)
	go func() {
		for i := range n {
			c.create(&pb.WatchCreateRequest{Key: []byte(fmt.Sprint("idle/", i))})
		}
	}()
	for range n {
		c.next()
	}
	progress := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}
	for b.Loop() {
		m.put("busy", "v")
		c.send(progress)
		if r := c.next(); r.WatchId != InvalidWatchID || len(r.Events) > 0 {
			b.Fatalf("want a progress notification, got %v", r)
		}
	}
}
