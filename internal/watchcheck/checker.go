package watchcheck

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Config shapes a Checker.
type Config struct {
	// Prefix is where the load writes and the watchers watch ("w/").
	Prefix string
	// Writers and Pace shape the load (see WriteLoad).
	Writers int
	Pace    time.Duration
	// Hop is how long a Resumer watches through one client at least.
	Hop time.Duration
	// ProgressEvery, when > 0, is how often each client requests a progress
	// notification for its watchers (RequestProgress).
	ProgressEvery time.Duration
	// Seed varies the Resumers' choices.
	Seed uint64
}

// Checker runs a write load under a prefix and watchers of it through
// several clients, and checks at the end what each watcher got against the
// committed history: watchers from revision 1 (half with prev_kv, half with
// progress notifications), watchers from a revision in the load
// (AddFrom), and Resumers hopping over the clients.
type Checker struct {
	cfg  Config
	clis []*clientv3.Client
	ctx  context.Context
	stop context.CancelFunc
	load context.CancelFunc
	// loadWG waits for the load and the progress requests, watchWG for the
	// goroutines following the watchers.
	loadWG, watchWG sync.WaitGroup

	mu       sync.Mutex // guards watchers and resumers
	watchers []*checked
	resumers []*Resumer
}

type checked struct {
	name  string
	spec  Spec
	start int64
	rec   *Recorder
}

// Start starts the load and the first watchers through clis. Stop it with
// Stop, then Check; its goroutines end with Close.
func Start(clis []*clientv3.Client, cfg Config) *Checker {
	ctx, stop := context.WithCancel(context.Background())
	c := &Checker{cfg: cfg, clis: clis, ctx: ctx, stop: stop}
	c.addWatchers("from 1", 1)
	for j, s := range Specs(cfg.Prefix) {
		if j%2 == 0 {
			s = s.WithPrevKV()
		}
		r := Resume(ctx, s, 1, clis, cfg.Hop, cfg.Seed+uint64(j), clientv3.WithProgressNotify())
		c.resumers = append(c.resumers, r)
	}
	lctx, load := context.WithCancel(ctx)
	c.load = load
	writers := WriteLoad(lctx, clis, cfg.Writers, cfg.Prefix, cfg.Pace)
	c.loadWG.Add(1)
	go func() { defer c.loadWG.Done(); writers.Wait() }()
	if cfg.ProgressEvery > 0 {
		for _, cli := range clis {
			c.loadWG.Add(1)
			go func() {
				defer c.loadWG.Done()
				for {
					select {
					case <-lctx.Done():
						return
					case <-time.After(cfg.ProgressEvery):
					}
					rctx, cancel := context.WithTimeout(lctx, time.Second)
					_ = cli.RequestProgress(rctx) // a lost request is only a missing bookmark
					cancel()
				}
			}()
		}
	}
	return c
}

// AddFrom adds watchers starting at revision rev (a recent past, or the
// present) through every client.
func (c *Checker) AddFrom(rev int64) {
	c.addWatchers(fmt.Sprintf("from %d", rev), rev)
}

func (c *Checker) addWatchers(what string, start int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, cli := range c.clis {
		for j, s := range Specs(c.cfg.Prefix) {
			var extra []clientv3.OpOption
			if (i+j)%2 == 0 {
				s = s.WithPrevKV()
			} else {
				extra = append(extra, clientv3.WithProgressNotify())
			}
			w := &checked{name: fmt.Sprintf("client %d watcher %d %s", i, j, what), spec: s, start: start, rec: &Recorder{}}
			wch := s.Watch(c.ctx, cli, start, extra...)
			c.watchWG.Add(1)
			go func() { defer c.watchWG.Done(); w.rec.Follow(wch, nil) }()
			c.watchers = append(c.watchers, w)
		}
	}
}

// Stop stops the load and returns the revision of one last put through
// cli, made after it: a write whose client gave up may still be applied
// until then, and the history to check ends there.
func (c *Checker) Stop(ctx context.Context, cli *clientv3.Client) (int64, error) {
	c.load()
	c.loadWG.Wait()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resp, err := cli.Put(ctx, c.cfg.Prefix+"end", "")
	if err != nil {
		return 0, fmt.Errorf("watchcheck: the put that ends the history: %w", err)
	}
	return resp.Header.Revision, nil
}

// Check waits (for wait at most) until every watcher has got the events of
// history it must get, and returns how they break the guarantees (see the
// package doc), and a summary for the log.
func (c *Checker) Check(history []*mvccpb.Event, wait time.Duration) (errs []string, summary string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	deadline := time.Now().Add(wait)
	all := append([]*checked(nil), c.watchers...)
	hops := 0
	for j, r := range c.resumers {
		all = append(all, &checked{name: fmt.Sprintf("resumer %d", j), spec: r.Spec, start: r.Start, rec: r.Rec})
		hops += r.Hops()
	}
	events, bookmarks := 0, 0
	for _, w := range all {
		Wait(w.rec.Events, Want(w.spec, history, w.start), time.Until(deadline))
		errs = append(errs, Check(w.name, w.spec, w.rec, history, w.start)...)
		resps, _ := w.rec.Responses()
		for _, r := range resps {
			events += len(r.Events)
			if r.Progress > 0 {
				bookmarks++
			}
		}
	}
	return errs, fmt.Sprintf("%d watchers (%d resumers over %d hops) got %d events and %d progress notifications; %d events committed",
		len(all), len(c.resumers), hops, events, bookmarks, len(history))
}

// Close ends the watchers.
func (c *Checker) Close() {
	c.stop()
	for _, r := range c.resumers {
		r.Wait()
	}
	c.loadWG.Wait()
	c.watchWG.Wait()
}

// History reads, through cli, the events under prefix from revision 1 to
// end, as a watch from revision 1 delivers them: from the member's event
// index.
func History(ctx context.Context, cli *clientv3.Client, prefix string, end int64) ([]*mvccpb.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	wch := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(1), clientv3.WithPrevKV())
	var out []*mvccpb.Event
	for r := range wch {
		if err := r.Err(); err != nil {
			return nil, fmt.Errorf("watchcheck: history of %s: %w", prefix, err)
		}
		for _, ev := range r.Events {
			out = append(out, (*mvccpb.Event)(ev))
		}
		if n := len(out); n > 0 && out[n-1].Kv.ModRevision >= end {
			return out, nil
		}
	}
	return nil, fmt.Errorf("watchcheck: history of %s: %d events up to revision %d, want %d: %w", prefix, len(out), lastRev(out), end, ctx.Err())
}

func lastRev(evs []*mvccpb.Event) int64 {
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Kv.ModRevision
}

// Replay checks history, the events under prefix from revision 1, against
// what the member behind cli reads under prefix at revisions from 1 to end:
// at each of samples revisions spread over them (and at end), the keys the
// history leaves must be the keys a range at that revision finds. The
// history the watchers are checked against is so checked against reads.
func Replay(ctx context.Context, cli *clientv3.Client, prefix string, history []*mvccpb.Event, end int64, samples int) []string {
	var errs []string
	state := map[string]*mvccpb.KeyValue{}
	i := 0
	var revs []int64
	for rev := int64(1); rev < end; rev += max(1, end/int64(samples)) {
		revs = append(revs, rev)
	}
	for _, rev := range append(revs, end) {
		for ; i < len(history) && history[i].Kv.ModRevision <= rev; i++ {
			ev := history[i]
			if ev.Type == mvccpb.Event_PUT {
				state[string(ev.Kv.Key)] = ev.Kv
			} else {
				delete(state, string(ev.Kv.Key))
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.Get(rctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithSerializable())
		cancel()
		if err != nil {
			errs = append(errs, fmt.Sprintf("replay: range %s at revision %d: %v", prefix, rev, err))
			continue
		}
		got := map[string]bool{}
		for _, kv := range resp.Kvs {
			got[string(kv.Key)] = true
			w, ok := state[string(kv.Key)]
			if !ok || w.ModRevision != kv.ModRevision || string(w.Value) != string(kv.Value) {
				errs = append(errs, fmt.Sprintf("replay: at revision %d %s=%q (mod %d), the history has %v", rev, kv.Key, kv.Value, kv.ModRevision, w))
			}
		}
		for k := range state {
			if !got[k] {
				errs = append(errs, fmt.Sprintf("replay: at revision %d the history has %s, a range does not", rev, k))
			}
		}
	}
	return errs
}

// Diff describes the first difference between two histories, or returns ""
// when they hold the same events.
func Diff(a, b []*mvccpb.Event) string {
	for i := range max(len(a), len(b)) {
		switch {
		case i >= len(a):
			return fmt.Sprintf("event %d: none, then %s", i, describe(b[i]))
		case i >= len(b):
			return fmt.Sprintf("event %d: %s, then none", i, describe(a[i]))
		case describe(a[i]) != describe(b[i]):
			return fmt.Sprintf("event %d: %s, then %s", i, describe(a[i]), describe(b[i]))
		}
	}
	return ""
}

func describe(ev *mvccpb.Event) string {
	s := fmt.Sprintf("%s %s=%q@%d (created %d, version %d, lease %d)", ev.Type, ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision, ev.Kv.CreateRevision, ev.Kv.Version, ev.Kv.Lease)
	if ev.PrevKv != nil {
		s += fmt.Sprintf(" prev %q@%d", ev.PrevKv.Value, ev.PrevKv.ModRevision)
	}
	return s
}
