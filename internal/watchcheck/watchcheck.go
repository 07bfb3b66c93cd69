// Package watchcheck checks what etcd-API watchers received against the
// committed history of a cluster, for the tests of a single server and of
// multi-process clusters under faults alike. A watcher's responses, recorded
// with Follow, must be:
//
//   - ordered: events in revision order, and a revision's events in the
//     order the history holds them;
//   - unique: no event delivered twice;
//   - atomic: all of a revision's events in one response;
//   - reliable: no gap, every event of the watched range from the start
//     revision on (with the key's previous version when prev_kv was asked);
//   - resumable: a watcher cut and resumed from the revision after the last
//     one it saw (or the last progress notification), on any member, joins
//     up with what it got before into the same history;
//   - bookmarkable: no event delivered after a progress notification is at
//     or below the notification's revision.
//
// It also drives the load that the checks need (WriteLoad: puts, deletes and
// multi-key transactions) and the watchers that hop from member to member
// (Resumer). It speaks to plinth only through the etcd client, and must
// never import the server's packages: the cluster tests run plinth as
// processes and see only the wire.
package watchcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Spec is the range of one checked watcher: the key and options it watches
// with, and the same range as [Key, End) for matching (End "" is the key
// alone, "\x00" every key from Key on).
type Spec struct {
	Key  string
	End  string
	Opts []clientv3.OpOption
	// PrevKV asks each event's previous version of its key.
	PrevKV bool
}

// Specs are the ranges the checks watch under prefix: the whole prefix, a
// sub-prefix, one key, every key from one on, and a range, over the keys
// WriteLoad writes.
func Specs(prefix string) []Spec {
	k := func(i int) string { return fmt.Sprintf("%sk%02d", prefix, i) }
	end := prefix[:len(prefix)-1] + string(prefix[len(prefix)-1]+1)
	return []Spec{
		{Key: prefix, End: end, Opts: []clientv3.OpOption{clientv3.WithPrefix()}},
		{Key: prefix + "k1", End: prefix + "k2", Opts: []clientv3.OpOption{clientv3.WithPrefix()}},
		{Key: k(5), End: ""},
		{Key: k(10), End: "\x00", Opts: []clientv3.OpOption{clientv3.WithFromKey()}},
		{Key: k(3), End: k(12), Opts: []clientv3.OpOption{clientv3.WithRange(k(12))}},
	}
}

// WithPrevKV returns s asking for previous versions too.
func (s Spec) WithPrevKV() Spec {
	s.PrevKV = true
	s.Opts = append(append([]clientv3.OpOption(nil), s.Opts...), clientv3.WithPrevKV())
	return s
}

// Match tells whether key is in the range.
func (s Spec) Match(key string) bool {
	switch s.End {
	case "":
		return key == s.Key
	case "\x00":
		return key >= s.Key
	}
	return key >= s.Key && key < s.End
}

// Watch starts a watch of s through cli from revision start, with extra
// options (progress notify, require leader).
func (s Spec) Watch(ctx context.Context, cli *clientv3.Client, start int64, extra ...clientv3.OpOption) clientv3.WatchChan {
	opts := append([]clientv3.OpOption{clientv3.WithRev(start)}, s.Opts...)
	return cli.Watch(ctx, s.Key, append(opts, extra...)...)
}

// WriteLoad runs writers of puts, deletes and three-operation transactions
// (a put, a delete and a put: three events at one revision) on 20 keys under
// prefix until ctx ends, through the clients given in turn, each writer
// sleeping pace between its writes. Failed writes are left to the
// history: whether they took effect is what the checks read back.
func WriteLoad(ctx context.Context, clis []*clientv3.Client, writers int, prefix string, pace time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			cli := clis[w%len(clis)]
			key := func(i int) string { return fmt.Sprintf("%sk%02d", prefix, i) }
			for i := 0; ctx.Err() == nil; i++ {
				val := fmt.Sprintf("%d.%d", w, i)
				octx, cancel := context.WithTimeout(ctx, 5*time.Second)
				switch r.IntN(10) {
				case 0:
					_, _ = cli.Delete(octx, fmt.Sprintf("%sk%d", prefix, r.IntN(2)), clientv3.WithPrefix())
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
						clientv3.OpPut(key(a), val),
						clientv3.OpDelete(key(c)),
						clientv3.OpPut(key(b), val),
					).Commit()
				default:
					_, _ = cli.Put(octx, key(r.IntN(20)), val)
				}
				cancel()
				if pace > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(pace):
					}
				}
			}
		}()
	}
	return &wg
}

// Response is one watch response as a watcher got it: its events, or a
// progress notification at Progress.
type Response struct {
	Events   []*mvccpb.Event
	Progress int64
}

// Recorder holds what one watcher got, response by response. A watcher
// resumed after a cut records into the same Recorder: the checks see
// one stream.
type Recorder struct {
	mu    sync.Mutex // guards the fields below
	resps []Response
	err   error
}

// Follow records the responses of wch into rec until wch closes or fails.
// ok is false when it failed (the error is recorded unless tolerate says
// a resumed watch may get past it, such as a lost leader).
func (rec *Recorder) Follow(wch clientv3.WatchChan, tolerate func(error) bool) (ok bool) {
	for r := range wch {
		if err := r.Err(); err != nil {
			if tolerate == nil || !tolerate(err) {
				rec.mu.Lock()
				rec.err = err
				rec.mu.Unlock()
			}
			return false
		}
		if r.IsProgressNotify() {
			rec.mu.Lock()
			rec.resps = append(rec.resps, Response{Progress: r.Header.Revision})
			rec.mu.Unlock()
			continue
		}
		if len(r.Events) == 0 {
			continue
		}
		evs := make([]*mvccpb.Event, len(r.Events))
		for i, ev := range r.Events {
			evs[i] = (*mvccpb.Event)(ev)
		}
		rec.mu.Lock()
		rec.resps = append(rec.resps, Response{Events: evs})
		rec.mu.Unlock()
	}
	return true
}

// Resume is the revision a watcher resumes from: the one after the last
// event or progress notification it got, or start if it got neither.
func (rec *Recorder) Resume(start int64) int64 {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i := len(rec.resps) - 1; i >= 0; i-- {
		r := rec.resps[i]
		if n := len(r.Events); n > 0 {
			return max(start, r.Events[n-1].Kv.ModRevision+1)
		}
		if r.Progress > 0 {
			return max(start, r.Progress+1)
		}
	}
	return start
}

// Events counts the events recorded.
func (rec *Recorder) Events() int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, r := range rec.resps {
		n += len(r.Events)
	}
	return n
}

// Responses returns a copy of what was recorded, and the error that ended
// the watch if one did.
func (rec *Recorder) Responses() ([]Response, error) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]Response(nil), rec.resps...), rec.err
}

// Join records into rec what others recorded, in turn: a watcher cut and
// resumed with a Recorder of each part.
func Join(parts ...*Recorder) *Recorder {
	joined := &Recorder{}
	for _, p := range parts {
		resps, err := p.Responses()
		joined.resps = append(joined.resps, resps...)
		if err != nil && joined.err == nil {
			joined.err = err
		}
	}
	return joined
}

// Want lists the events of history that a watcher of s from start must get.
func Want(s Spec, history []*mvccpb.Event, start int64) int {
	n := 0
	for _, ev := range history {
		if ev.Kv.ModRevision >= start && s.Match(string(ev.Kv.Key)) {
			n++
		}
	}
	return n
}

// Wait waits, for d at most, until rec holds the events of history a
// watcher of s from start must get (or more).
func Wait(rec func() int, want int, d time.Duration) {
	deadline := time.Now().Add(d)
	for rec() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// Check returns how what rec recorded for a watcher of s from revision start
// breaks the guarantees of the package doc, against history: every event
// committed from revision 1 on, in the range of s at least (each event's
// previous version is taken from it). It returns nothing when rec is right.
func Check(name string, s Spec, rec *Recorder, history []*mvccpb.Event, start int64) []string {
	resps, err := rec.Responses()
	var errs []string
	fail := func(format string, args ...any) {
		errs = append(errs, name+": "+fmt.Sprintf(format, args...))
	}
	if err != nil {
		fail("watch failed: %v", err)
	}

	// What the watcher must get, with each event's previous version.
	var want []wanted
	latest := map[string]*mvccpb.KeyValue{}
	for _, ev := range history {
		key := string(ev.Kv.Key)
		prev := latest[key]
		if ev.Type == mvccpb.Event_PUT {
			latest[key] = ev.Kv
		} else {
			delete(latest, key)
		}
		if ev.Kv.ModRevision >= start && s.Match(key) {
			want = append(want, wanted{ev, prev})
		}
	}
	checkPrev := s.PrevKV

	var got []*mvccpb.Event
	inResp := map[int64]int{} // revision -> response that carried it
	bookmark := int64(0)      // the highest progress notification so far
	for i, r := range resps {
		if r.Progress > 0 {
			bookmark = max(bookmark, r.Progress)
			continue
		}
		for _, ev := range r.Events {
			rev := ev.Kv.ModRevision
			if j, ok := inResp[rev]; ok && j != i {
				fail("atomic: revision %d split across responses %d and %d", rev, j, i)
			}
			inResp[rev] = i
			if rev <= bookmark {
				fail("bookmarkable: event %s at revision %d delivered after a progress notification at %d", ev.Kv.Key, rev, bookmark)
			}
			if n := len(got); n > 0 && got[n-1].Kv.ModRevision > rev {
				fail("ordered: revision %d delivered after %d", rev, got[n-1].Kv.ModRevision)
			}
			if rev < start {
				fail("event %s at revision %d before the start %d", ev.Kv.Key, rev, start)
			}
			got = append(got, ev)
		}
	}
	same := func(a, b *mvccpb.KeyValue) bool {
		return string(a.Key) == string(b.Key) && string(a.Value) == string(b.Value) && a.ModRevision == b.ModRevision &&
			a.CreateRevision == b.CreateRevision && a.Version == b.Version && a.Lease == b.Lease
	}
	sameEvent := func(g *mvccpb.Event, w *mvccpb.Event) bool { return g.Type == w.Type && same(g.Kv, w.Kv) }
	// Walk both lists: a wanted event missing is a gap, one got twice a
	// duplicate, anything else got that is not wanted a stray.
	gi, wi := 0, 0
	for gi < len(got) || wi < len(want) {
		switch {
		case gi < len(got) && wi < len(want) && sameEvent(got[gi], want[wi].ev):
			if checkPrev {
				p, wp := got[gi].PrevKv, want[wi].prev
				if (p == nil) != (wp == nil) || (p != nil && !same(p, wp)) {
					fail("prev_kv of %s at revision %d is %v, want %v", got[gi].Kv.Key, got[gi].Kv.ModRevision, p, wp)
				}
			}
			gi, wi = gi+1, wi+1
		case gi < len(got) && gi > 0 && sameEvent(got[gi], got[gi-1]):
			fail("unique: %s %s at revision %d delivered twice", got[gi].Type, got[gi].Kv.Key, got[gi].Kv.ModRevision)
			gi++
		case gi < len(got) && (wi == len(want) || got[gi].Kv.ModRevision < want[wi].ev.Kv.ModRevision ||
			(got[gi].Kv.ModRevision == want[wi].ev.Kv.ModRevision && !containsAt(want[wi:], got[gi], sameEvent))):
			fail("event %s %s=%q at revision %d is not in the committed history", got[gi].Type, got[gi].Kv.Key, got[gi].Kv.Value, got[gi].Kv.ModRevision)
			gi++
		default:
			w := want[wi].ev
			fail("reliable: %s %s=%q at revision %d missing (%d events got, %d wanted from revision %d)", w.Type, w.Kv.Key, w.Kv.Value, w.Kv.ModRevision, len(got), len(want), start)
			wi++
		}
		if len(errs) > 20 {
			fail("(more not shown)")
			break
		}
	}
	return errs
}

// wanted is an event a watcher must get, with its key's previous version.
type wanted struct {
	ev   *mvccpb.Event
	prev *mvccpb.KeyValue
}

// containsAt tells whether ev is among the wanted events of its own
// revision at the head of want.
func containsAt(want []wanted, ev *mvccpb.Event, same func(g, w *mvccpb.Event) bool) bool {
	for _, w := range want {
		if w.ev.Kv.ModRevision != ev.Kv.ModRevision {
			return false
		}
		if same(ev, w.ev) {
			return true
		}
	}
	return false
}

// Resumer is a watcher that does what the etcd client does when its member
// dies, on purpose and often: it watches through one client (one member)
// for a while, with WithRequireLeader, and when that watch ends (the hop
// time passed, the member lost its leader) resumes on the next client from
// the revision after the last event or progress notification it got.
type Resumer struct {
	Spec  Spec
	Start int64
	Rec   *Recorder
	done  chan struct{}
	mu    sync.Mutex // guards hops
	hops  int
}

// Resume starts a Resumer of s from start over clis until ctx ends, each
// hop lasting between hop and twice hop; extra options go on every watch.
func Resume(ctx context.Context, s Spec, start int64, clis []*clientv3.Client, hop time.Duration, seed uint64, extra ...clientv3.OpOption) *Resumer {
	r := &Resumer{Spec: s, Start: start, Rec: &Recorder{}, done: make(chan struct{})}
	rng := rand.New(rand.NewPCG(seed, 11))
	go func() {
		defer close(r.done)
		for i := rng.IntN(len(clis)); ctx.Err() == nil; i++ {
			began := time.Now()
			wctx, cancel := context.WithTimeout(ctx, hop+time.Duration(rng.Int64N(int64(hop))))
			wch := s.Watch(clientv3.WithRequireLeader(wctx), clis[i%len(clis)], r.Rec.Resume(start), extra...)
			r.Rec.Follow(wch, resumable)
			cancel()
			if time.Since(began) < hop/4 {
				// Refused at once (a member without a leader): pause
				// before the next member rather than spin.
				select {
				case <-ctx.Done():
				case <-time.After(hop / 4):
				}
			}
			r.mu.Lock()
			r.hops++
			r.mu.Unlock()
		}
	}()
	return r
}

// Hops counts the watches the Resumer made so far.
func (r *Resumer) Hops() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hops
}

// Wait waits until the Resumer has stopped (its context ended).
func (r *Resumer) Wait() { <-r.done }

// resumable tells the errors after which a client resumes a watch
// elsewhere: its member lost the leader, or the client gave up on it.
func resumable(err error) bool {
	if errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable:
		return true
	}
	return false
}
