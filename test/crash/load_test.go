package crash

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// opTimeout bounds one request of the load. A live member answers far sooner;
// requests cut short by a kill fail at once.
const opTimeout = 5 * time.Second

// load runs the workers of one cycle until ctx is done. Each worker issues
// one request at a time and stops at its first request without an answer:
// that request's fate is unknown until the member restarts, and a later
// request from the same worker on the same key must not overtake it.
//
// Readers are the exception: a read changes nothing, so a reader goes on
// after an error; it counts its answered and failed reads.
type load struct {
	cli   *clientv3.Client
	h     *history
	cycle int
	seed  uint64
	// compactFrom is the revision the cycle's first compaction asks for:
	// the current revision when the previous cycle's checks ran, so that
	// the ops of earlier cycles were checked at their revisions first.
	compactFrom int64
	wg          sync.WaitGroup

	writesAcked          atomic.Int64
	readsOK, readsFailed atomic.Int64
	readErr              atomic.Value // the last read error (error)
}

func startLoad(ctx context.Context, cli *clientv3.Client, h *history, cycle int, seed uint64, compactFrom int64) *load {
	l := &load{cli: cli, h: h, cycle: cycle, seed: seed, compactFrom: compactFrom}
	worker := 0
	spawn := func(f func(ctx context.Context, w int, rng *rand.Rand)) {
		w := worker
		worker++
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			f(ctx, w, rng)
		}()
	}
	for w := 0; w < putWorkers; w++ {
		spawn(func(ctx context.Context, _ int, rng *rand.Rand) { l.putWorker(ctx, w, rng) })
	}
	for w := 0; w < delWorkers; w++ {
		spawn(func(ctx context.Context, _ int, rng *rand.Rand) { l.delWorker(ctx, w, rng) })
	}
	for w := 0; w < txnWorkers; w++ {
		spawn(func(ctx context.Context, _ int, rng *rand.Rand) { l.txnWorker(ctx, w, rng) })
	}
	for w := 0; w < incrWorkers; w++ {
		spawn(func(ctx context.Context, ww int, rng *rand.Rand) { l.incrWorker(ctx, ww, rng) })
	}
	for r := 0; r < readWorkers; r++ {
		spawn(func(ctx context.Context, _ int, rng *rand.Rand) { l.readWorker(ctx, r, rng) })
	}
	spawn(func(ctx context.Context, _ int, rng *rand.Rand) { l.compactWorker(ctx, rng) })
	return l
}

// wait waits for every worker to return.
func (l *load) wait() { l.wg.Wait() }

func (l *load) finish(o *op, err error) bool {
	o.end = time.Now()
	if err != nil {
		o.err = err
		return false
	}
	o.acked = true
	if o.kind != opCompact {
		l.writesAcked.Add(1)
	}
	return true
}

// waitActive waits until the cycle had at least writes writes and one read
// acknowledged, for 30s at most: a member that takes no writes or answers no
// reads after a restart fails the test here.
func (l *load) waitActive(ctx context.Context, writes int64) error {
	deadline := time.Now().Add(30 * time.Second)
	for l.writesAcked.Load() < writes || l.readsOK.Load() == 0 {
		if time.Now().After(deadline) {
			err, _ := l.readErr.Load().(error)
			return fmt.Errorf("in 30s, %d writes acknowledged (want %d), %d reads answered and %d failed (the last with %v)",
				l.writesAcked.Load(), writes, l.readsOK.Load(), l.readsFailed.Load(), err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

func (l *load) put(ctx context.Context, w int, key string) bool {
	o := l.h.begin(opPut, l.cycle, w, key)
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	resp, err := l.cli.Put(octx, key, o.value, clientv3.WithPrevKV())
	cancel()
	if !l.finish(o, err) {
		return false
	}
	o.wrote, o.rev = true, resp.Header.Revision
	if resp.PrevKv != nil {
		s := snap(resp.PrevKv)
		o.prev = &s
	}
	return true
}

func (l *load) putWorker(ctx context.Context, w int, rng *rand.Rand) {
	for ctx.Err() == nil {
		if !l.put(ctx, w, pKey(w, rng.IntN(putKeys))) {
			return
		}
	}
}

func (l *load) delWorker(ctx context.Context, w int, rng *rand.Rand) {
	for ctx.Err() == nil {
		k := rng.IntN(delKeys)
		switch r := rng.IntN(100); {
		case r < 55:
			if !l.put(ctx, 100+w, dKey(w, k)) {
				return
			}
		default:
			kind, key, opts := opDelete, dKey(w, k), []clientv3.OpOption{clientv3.WithPrevKV()}
			if r >= 90 {
				kind, key = opDeletePrefix, dPrefix(w)
				opts = append(opts, clientv3.WithPrefix())
			}
			o := l.h.begin(kind, l.cycle, 100+w, key)
			octx, cancel := context.WithTimeout(ctx, opTimeout)
			resp, err := l.cli.Delete(octx, key, opts...)
			cancel()
			if !l.finish(o, err) {
				return
			}
			o.rev, o.wrote = resp.Header.Revision, resp.Deleted > 0
			for _, kv := range resp.PrevKvs {
				o.deleted = append(o.deleted, snap(kv))
			}
			if int64(len(o.deleted)) != resp.Deleted {
				o.err = fmt.Errorf("delete answered deleted=%d with %d prev kvs", resp.Deleted, len(o.deleted))
			}
		}
	}
}

func (l *load) txnWorker(ctx context.Context, w int, rng *rand.Rand) {
	for ctx.Err() == nil {
		i := rng.IntN(txnPairs)
		a, b := tKey(w, i, "a"), tKey(w, i, "b")
		o := l.h.begin(opTxnPair, l.cycle, 200+w, a, b)
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := l.cli.Txn(octx).Then(clientv3.OpPut(a, o.value), clientv3.OpPut(b, o.value)).Commit()
		cancel()
		if !l.finish(o, err) {
			return
		}
		o.rev, o.wrote = resp.Header.Revision, resp.Succeeded
		if !resp.Succeeded {
			o.err = fmt.Errorf("txn without compares answered succeeded=false")
		}
	}
}

// readWorker reads p keys with linearizable gets, for the linearizability
// check of the p keys: reader r reads the keys of the put workers w with
// w % readWorkers == r, so that each key is read about as often as it is
// written. A failed read is counted, and the reader goes on after a pause (a
// member being killed fails reads in a burst).
func (l *load) readWorker(ctx context.Context, r int, rng *rand.Rand) {
	for ctx.Err() == nil {
		w := r + readWorkers*rng.IntN(putWorkers/readWorkers)
		key := pKey(w, rng.IntN(putKeys))
		o := &op{kind: opRead, cycle: l.cycle, worker: 400 + r, keys: []string{key}, start: time.Now()}
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := l.cli.Get(octx, key)
		cancel()
		o.end = time.Now()
		if err != nil {
			if ctx.Err() == nil {
				l.readsFailed.Add(1)
				l.readErr.Store(err)
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		l.readsOK.Add(1)
		o.acked, o.rev = true, resp.Header.Revision
		switch len(resp.Kvs) {
		case 0:
		case 1:
			s := snap(resp.Kvs[0])
			o.prev, o.value = &s, s.value
		default:
			o.err = fmt.Errorf("get %s answered %d keys", key, len(resp.Kvs))
		}
		l.h.addRead(o)
	}
}

// compactWorker compacts the whole key space now and then: first at
// compactFrom, then each time at the revision the previous compaction's
// answer carried, so that compactions follow the writes closely and race with
// them. Some ask to wait for the physical compaction. Like a writer, it stops
// at its first request without an answer.
func (l *load) compactWorker(ctx context.Context, rng *rand.Rand) {
	next := l.compactFrom
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(30+rng.IntN(170)) * time.Millisecond):
		}
		o := l.h.begin(opCompact, l.cycle, 500)
		o.compactRev, o.physical = next, rng.IntN(2) == 0
		var opts []clientv3.CompactOption
		if o.physical {
			opts = append(opts, clientv3.WithCompactPhysical())
		}
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := l.cli.Compact(octx, next, opts...)
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			// Compacted at or above next already: nothing to do, and an
			// answer all the same.
			o.end, o.acked = time.Now(), true
			continue
		}
		if !l.finish(o, err) {
			return
		}
		o.rev = resp.Header.Revision
		next = o.rev
	}
}

// counterState is what an incrementing worker last saw of a counter.
type counterState struct {
	known bool
	mod   int64
	n     int64
}

func (l *load) incrWorker(ctx context.Context, w int, rng *rand.Rand) {
	var seen [counters]counterState
	for ctx.Err() == nil {
		c := rng.IntN(counters)
		if !seen[c].known {
			octx, cancel := context.WithTimeout(ctx, opTimeout)
			resp, err := l.cli.Get(octx, cKey(c))
			cancel()
			if err != nil || len(resp.Kvs) != 1 {
				return
			}
			n, ok := counterOf(string(resp.Kvs[0].Value))
			if !ok {
				return
			}
			seen[c] = counterState{known: true, mod: resp.Kvs[0].ModRevision, n: n}
		}
		st := seen[c]
		o, ok := l.incr(ctx, 300+w, c, st.n+1, &st.mod)
		if !ok {
			return
		}
		if o.wrote {
			seen[c] = counterState{known: true, mod: o.rev, n: o.n}
		} else {
			seen[c] = counterState{} // read it again
		}
	}
}

// incr writes counter c = n (and its clog entry) in one txn, if the counter's
// mod revision is *mod (unconditionally when mod is nil).
func (l *load) incr(ctx context.Context, w, c int, n int64, mod *int64) (*op, bool) {
	o := l.h.begin(opIncr, l.cycle, w, cKey(c), clogKey(c, n))
	o.counter, o.n = c, n
	o.value = fmt.Sprintf("%s:%d", opValue(o.id), n)
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	txn := l.cli.Txn(octx)
	if mod != nil {
		txn = txn.If(clientv3.Compare(clientv3.ModRevision(cKey(c)), "=", *mod))
	}
	resp, err := txn.Then(clientv3.OpPut(cKey(c), o.value), clientv3.OpPut(clogKey(c, n), opValue(o.id))).Commit()
	if !l.finish(o, err) {
		return o, false
	}
	o.rev, o.wrote = resp.Header.Revision, resp.Succeeded
	return o, true
}
