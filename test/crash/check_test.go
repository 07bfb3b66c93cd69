package crash

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// checkParallelism is how many reads the checks keep in flight.
const checkParallelism = 8

// checker proves, after a restart, what the history promises: every
// acknowledged write at its revision, every op applied at most once and at
// one revision, every txn whole, revisions in real-time order.
//
// Compactions make the history below their revision unreadable: the checks
// read nothing below floor, the newest revision a compaction asked for
// (acknowledged or not), and expect ErrCompacted below ackedFloor, the newest
// one an acknowledged compaction asked for. The ops acknowledged below the
// floor were checked at their revisions by the verification after the kill
// of their cycle, unless a compaction of their own cycle came first.
type checker struct {
	cli *clientv3.Client
	h   *history

	floor, ackedFloor int64 // set by verify
	compacted         int   // reads that failed as compacted, as they must; guarded by mu

	mu   sync.Mutex // guards errs and compacted
	errs []string
}

// result sums up one verification.
type result struct {
	rev        int64 // the current revision after the restart
	acked      int
	unacked    int
	applied    int // unacknowledged ops found applied
	notApplied int
	counters   [counters]int64
	floor      int64 // reads below it may have been compacted
	compacted  int   // reads below the acknowledged compactions that failed as compacted, as they must
}

func (c *checker) errorf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

// getAt reads key at rev from the member's local store (every entry the
// member had committed was applied before the barrier read of verify).
func (c *checker) getAt(ctx context.Context, key string, rev int64) (*kvSnap, error) {
	resp, err := c.cli.Get(ctx, key, clientv3.WithRev(rev), clientv3.WithSerializable())
	if err != nil {
		return nil, fmt.Errorf("get %s at revision %d: %w", key, rev, err)
	}
	switch len(resp.Kvs) {
	case 0:
		return nil, nil
	case 1:
		s := snap(resp.Kvs[0])
		if s.key != key {
			return nil, fmt.Errorf("get %s at revision %d answered key %s", key, rev, s.key)
		}
		return &s, nil
	}
	return nil, fmt.Errorf("get %s at revision %d answered %d keys", key, rev, len(resp.Kvs))
}

// expectCompacted checks that a read of key at rev, below an acknowledged
// compaction, fails as compacted.
func (c *checker) expectCompacted(ctx context.Context, key string, rev int64, what fmt.Stringer) {
	if rev >= c.ackedFloor || rev <= 0 {
		return
	}
	_, err := c.cli.Get(ctx, key, clientv3.WithRev(rev), clientv3.WithSerializable())
	if !errors.Is(err, rpctypes.ErrCompacted) {
		c.errorf("%v: a read of %s at revision %d, below the acknowledged compaction at %d, answered %v, want %v", what, key, rev, c.ackedFloor, err, rpctypes.ErrCompacted)
		return
	}
	c.mu.Lock()
	c.compacted++
	c.mu.Unlock()
}

// walk returns the history of key up to revision rev, oldest first, back to
// the newest creation of the key or to the version live at the floor,
// whichever is newer: each version is read at the revision just before the
// next one's. complete is true when the first element is a creation: the
// key reads absent just before it, or it is version 1 and the revision
// before it is below the floor.
func (c *checker) walk(ctx context.Context, key string, rev int64) (chain []kvSnap, complete bool, err error) {
	cur, err := c.getAt(ctx, key, rev)
	complete = true
	for err == nil && cur != nil {
		if n := len(chain); n > 0 && cur.mod >= chain[n-1].mod {
			return nil, false, fmt.Errorf("%s: reading at revision %d answered mod revision %d", key, chain[n-1].mod-1, cur.mod)
		}
		chain = append(chain, *cur)
		if cur.mod <= 1 {
			break
		}
		if cur.mod-1 < c.floor {
			complete = cur.version == 1
			c.expectCompacted(ctx, key, cur.mod-1, stringer("walk "+key))
			break
		}
		cur, err = c.getAt(ctx, key, cur.mod-1)
	}
	if err != nil {
		return nil, false, err
	}
	for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
		chain[i], chain[j] = chain[j], chain[i]
	}
	return chain, complete, nil
}

type stringer string

func (s stringer) String() string { return string(s) }

// parallel runs f(0..n-1) on checkParallelism goroutines.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for g := 0; g < checkParallelism; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}

// chainKeys lists every key whose history the checks walk.
func chainKeys() []string {
	var keys []string
	for w := 0; w < putWorkers; w++ {
		for k := 0; k < putKeys; k++ {
			keys = append(keys, pKey(w, k))
		}
	}
	for w := 0; w < delWorkers; w++ {
		for k := 0; k < delKeys; k++ {
			keys = append(keys, dKey(w, k))
		}
	}
	for w := 0; w < txnWorkers; w++ {
		for i := 0; i < txnPairs; i++ {
			keys = append(keys, tKey(w, i, "a"), tKey(w, i, "b"))
		}
	}
	for i := 0; i < counters; i++ {
		keys = append(keys, cKey(i))
	}
	return keys
}

// verify runs every check against the restarted member and returns a summary
// and the violations found.
func (c *checker) verify(ctx context.Context) (result, []string) {
	c.errs = nil
	c.floor, c.ackedFloor = c.h.compactFloors()
	c.compacted = 0
	res := result{floor: c.floor}
	// Barrier: a linearizable read returns only once the member applied
	// every entry committed before it, the ones replayed from the log too.
	resp, err := c.cli.Get(ctx, "crash/barrier")
	if err != nil {
		c.errorf("linearizable read after restart: %v", err)
		return res, c.errs
	}
	res.rev = resp.Header.Revision
	ops := c.h.snapshot()
	var maxAcked *op
	for _, o := range ops {
		if o.acked {
			res.acked++
			if o.err != nil {
				c.errorf("%v: bad answer: %v", o, o.err)
			}
			if maxAcked == nil || o.rev > maxAcked.rev {
				maxAcked = o
			}
		} else {
			res.unacked++
		}
	}
	if maxAcked != nil && res.rev < maxAcked.rev {
		c.errorf("current revision %d is below the acknowledged revision of %v", res.rev, maxAcked)
	}

	// Every acknowledged op, read back at its revision.
	parallel(len(ops), func(i int) {
		if o := ops[i]; o.acked {
			c.checkAcked(ctx, o)
		}
	})

	// The history of every key, one version at a time.
	keys := chainKeys()
	chains := make(map[string][]kvSnap, len(keys))
	complete := make(map[string]bool, len(keys))
	clogs := map[string][]*kvSnap{}
	var chainsMu sync.Mutex
	parallel(len(keys), func(i int) {
		key := keys[i]
		chain, whole, err := c.walk(ctx, key, res.rev)
		if err != nil {
			c.errorf("walk %s: %v", key, err)
			return
		}
		var logs []*kvSnap
		for n := 0; n < counters; n++ {
			if key != cKey(n) {
				continue
			}
			// Each counter version is written with its clog entry, in
			// one txn: the entry must carry the same revision.
			// The oldest version of a chain cut at the floor can be
			// older than the floor: read its entry at the floor, where
			// it is the same (clog keys are written once).
			for _, e := range chain {
				v, _ := counterOf(e.value)
				l, err := c.getAt(ctx, clogKey(n, v), max(e.mod, c.floor))
				if err != nil {
					c.errorf("%v", err)
				}
				logs = append(logs, l)
			}
		}
		chainsMu.Lock()
		chains[key], complete[key] = chain, whole
		clogs[key] = logs
		chainsMu.Unlock()
	})

	a := analysis{c: c, revOwner: map[int64]int64{}, idRev: map[int64]int64{}, fate: map[int64]int64{}}
	for _, o := range ops {
		if o.acked && o.wrote {
			a.record(o.id, o.rev, o.keys[0])
		}
	}
	for w := 0; w < putWorkers; w++ {
		for k := 0; k < putKeys; k++ {
			key := pKey(w, k)
			a.checkChain(key, chains[key], complete[key], opPut)
			a.match(key, chains[key], complete[key], c.h.keyOps(key))
		}
	}
	for w := 0; w < txnWorkers; w++ {
		for i := 0; i < txnPairs; i++ {
			ka, kb := tKey(w, i, "a"), tKey(w, i, "b")
			ca, cb := chains[ka], chains[kb]
			a.checkChain(ka, ca, complete[ka], opTxnPair)
			a.checkChain(kb, cb, complete[kb], opTxnPair)
			if len(ca) != len(cb) {
				c.errorf("txn pair %s, %s: %d versions of one, %d of the other:\n  %v\n  %v", ka, kb, len(ca), len(cb), ca, cb)
			} else {
				for j := range ca {
					if ca[j].mod != cb[j].mod || ca[j].value != cb[j].value {
						c.errorf("txn pair torn: %v but %v", ca[j], cb[j])
					}
				}
			}
			a.match(ka, ca, complete[ka], c.h.keyOps(ka))
		}
	}
	for w := 0; w < delWorkers; w++ {
		for k := 0; k < delKeys; k++ {
			key := dKey(w, k)
			a.checkChain(key, chains[key], complete[key], opPut)
			for _, e := range chains[key] {
				if o := c.h.get(mustID(e.value)); o != nil && !o.acked {
					a.fate[o.id] = e.mod
				}
			}
		}
	}
	for n := 0; n < counters; n++ {
		key := cKey(n)
		res.counters[n] = a.checkCounter(n, chains[key], complete[key], clogs[key], ops)
	}

	// The fate of an unacknowledged op, once decided, never changes.
	for _, o := range ops {
		if o.acked {
			continue
		}
		rev, decided := a.fate[o.id]
		if !decided {
			continue
		}
		if rev > 0 {
			res.applied++
		} else {
			res.notApplied++
		}
		if o.resolved && (o.applied != (rev > 0) || o.appliedRev != rev) {
			c.errorf("%v: an earlier restart found it applied=%v at revision %d, now applied=%v at revision %d", o, o.applied, o.appliedRev, rev > 0, rev)
		}
		o.resolved, o.applied, o.appliedRev = true, rev > 0, rev
	}
	c.checkRealTime(ops)
	c.checkLinearizable(ops)
	res.compacted = c.compacted
	return res, c.errs
}

func mustID(value string) int64 {
	id, _ := opIDOf(value)
	return id
}

// checkAcked reads an acknowledged op's writes back at its revision, or, for
// an op below the floor, checks that its revision reads as compacted.
func (c *checker) checkAcked(ctx context.Context, o *op) {
	if o.kind == opCompact {
		// At its revision the key space still reads: the other ops'
		// checks read there. Below it, reads fail as compacted.
		if o.rev > 0 {
			c.expectCompacted(ctx, "crash/barrier", o.compactRev-1, o)
		}
		return
	}
	if o.rev < c.floor {
		c.expectCompacted(ctx, o.keys[0], o.rev, o)
		return
	}
	expect := func(key string, rev int64, value string) *kvSnap {
		kv, err := c.getAt(ctx, key, rev)
		switch {
		case err != nil:
			c.errorf("%v: %v", o, err)
		case kv == nil:
			c.errorf("%v: LOST: %s is absent at revision %d", o, key, rev)
		case kv.value != value || kv.mod != rev:
			c.errorf("%v: at revision %d read %v, want value %q mod %d", o, rev, kv, value, rev)
		default:
			return kv
		}
		return nil
	}
	absent := func(key string, rev int64) {
		kv, err := c.getAt(ctx, key, rev)
		switch {
		case err != nil:
			c.errorf("%v: %v", o, err)
		case kv != nil:
			c.errorf("%v: %s is present at revision %d: %v", o, key, rev, kv)
		}
	}
	switch o.kind {
	case opPut:
		kv := expect(o.keys[0], o.rev, o.value)
		if kv == nil {
			return
		}
		if o.prev == nil {
			if kv.version != 1 || kv.create != o.rev {
				c.errorf("%v: created the key, but at its revision it reads %v", o, kv)
			}
			return
		}
		if kv.version != o.prev.version+1 || kv.create != o.prev.create {
			c.errorf("%v: replaced %v, but at its revision it reads %v", o, o.prev, kv)
		}
		if o.rev-1 < c.floor {
			return
		}
		before, err := c.getAt(ctx, o.keys[0], o.rev-1)
		if err != nil {
			c.errorf("%v: %v", o, err)
		} else if before == nil || *before != *o.prev {
			c.errorf("%v: replaced %v, but at revision %d the key reads %v", o, o.prev, o.rev-1, before)
		}
	case opDelete, opDeletePrefix:
		if len(o.deleted) == 0 {
			if o.kind == opDelete {
				absent(o.keys[0], o.rev)
			}
			return
		}
		for _, prev := range o.deleted {
			absent(prev.key, o.rev)
			if o.rev-1 < c.floor {
				continue
			}
			before, err := c.getAt(ctx, prev.key, o.rev-1)
			if err != nil {
				c.errorf("%v: %v", o, err)
			} else if before == nil || *before != prev {
				c.errorf("%v: deleted %v, but at revision %d the key reads %v", o, prev, o.rev-1, before)
			}
		}
	case opTxnPair:
		expect(o.keys[0], o.rev, o.value)
		expect(o.keys[1], o.rev, o.value)
	case opRead:
		kv, err := c.getAt(ctx, o.keys[0], o.rev)
		switch {
		case err != nil:
			c.errorf("%v: %v", o, err)
		case (kv == nil) != (o.prev == nil) || (kv != nil && *kv != *o.prev):
			c.errorf("%v: read %v, but at its revision the key reads %v", o, o.prev, kv)
		}
	case opIncr:
		if !o.wrote {
			return // the compare failed; the chains prove it wrote nothing
		}
		expect(o.keys[0], o.rev, o.value)
		if kv := expect(o.keys[1], o.rev, opValue(o.id)); kv != nil && (kv.version != 1 || kv.create != o.rev) {
			c.errorf("%v: clog entry %v was written before", o, kv)
		}
	}
}

// analysis relates the key histories to the ops of one verification.
type analysis struct {
	c        *checker
	revOwner map[int64]int64 // revision -> the op that wrote at it
	idRev    map[int64]int64 // op -> the revision it was applied at
	fate     map[int64]int64 // unacknowledged op -> revision it was applied at, 0 if not applied
}

// record notes that op id wrote key at rev: an op is applied at one revision
// only, and a revision belongs to one op.
func (a *analysis) record(id, rev int64, key string) {
	if r, ok := a.idRev[id]; ok && r != rev {
		a.c.errorf("APPLIED TWICE: op%d (%v) wrote at revision %d and at revision %d (%s)", id, a.c.h.get(id), r, rev, key)
	}
	a.idRev[id] = rev
	if other, ok := a.revOwner[rev]; ok && other != id {
		a.c.errorf("revision %d written by op%d (%v) and op%d (%v)", rev, other, a.c.h.get(other), id, a.c.h.get(id))
	}
	a.revOwner[rev] = id
}

// checkChain checks the shape of one key's history (versions counting up by
// one, from 1 when the chain is complete, one create revision, mod revisions
// rising) and that every version was written by an op of the given kind on
// this key.
func (a *analysis) checkChain(key string, chain []kvSnap, complete bool, kind opKind) {
	if len(chain) > 0 && complete && (chain[0].version != 1 || chain[0].create != chain[0].mod) {
		a.c.errorf("%s: its history begins with %v, not with a creation", key, chain[0])
	}
	for i, e := range chain {
		if e.version != chain[0].version+int64(i) || e.create != chain[0].create || (i > 0 && e.mod <= chain[i-1].mod) {
			a.c.errorf("%s: version %d of its history reads %v (first %v)", key, i+1, e, chain[0])
		}
		id, ok := opIDOf(e.value)
		o := a.c.h.get(id)
		if !ok || o == nil {
			a.c.errorf("%s: %v was written by no op of the test", key, e)
			continue
		}
		if o.kind != kind || (o.keys[0] != key && (len(o.keys) < 2 || o.keys[1] != key)) {
			a.c.errorf("%s: %v was written by %v", key, e, o)
		}
		if o.value != e.value {
			a.c.errorf("%s: %v, but %v wrote %q", key, e, o, o.value)
		}
		a.record(id, e.mod, key)
	}
}

// match walks a key's history beside the ops issued on it, in issue order:
// the history must hold every acknowledged op at its revision, in order, and
// between them only unacknowledged ops. A chain cut at the floor is matched
// from its oldest version's op on: the ops before it were overwritten below
// the floor.
func (a *analysis) match(key string, chain []kvSnap, complete bool, issued []*op) {
	i := 0
	if !complete && len(chain) > 0 {
		id, _ := opIDOf(chain[0].value)
		for i < len(issued) && issued[i].id != id {
			i++
		}
		if i == len(issued) {
			a.c.errorf("%s: %v, its oldest version above the floor %d, was written by none of its ops", key, chain[0], a.c.floor)
			return
		}
	}
	skip := func(to int, next string) {
		for ; i < to; i++ {
			if o := issued[i]; o.acked {
				a.c.errorf("LOST: %v is missing from the history of %s (next: %s)", o, key, next)
			} else {
				a.fate[o.id] = 0
			}
		}
	}
	for _, e := range chain {
		id, _ := opIDOf(e.value)
		j := i
		for j < len(issued) && issued[j].id != id {
			j++
		}
		if j == len(issued) {
			a.c.errorf("%s: %v is out of issue order (applied twice, reordered, or written by another key's op)", key, e)
			continue
		}
		skip(j, e.String())
		o := issued[j]
		if o.acked && o.rev != e.mod {
			a.c.errorf("%v: history of %s holds it at revision %d", o, key, e.mod)
		}
		if !o.acked {
			a.fate[o.id] = e.mod
		}
		i = j + 1
	}
	skip(len(issued), "none")
}

// checkCounter checks one counter's history: values 0, 1, 2, ... each with
// its clog entry at the same revision, each written by a different incr op
// that meant to write exactly that value; every acknowledged successful
// increment among them, and the rest unacknowledged. It returns the value.
//
// A chain cut at the floor starts at a later value; the increments
// acknowledged before its oldest version are not checked again.
func (a *analysis) checkCounter(n int, chain []kvSnap, complete bool, logs []*kvSnap, ops []*op) int64 {
	key := cKey(n)
	a.checkChain(key, chain, complete, opIncr)
	if len(chain) == 0 {
		a.c.errorf("%s: absent", key)
		return -1
	}
	first, _ := counterOf(chain[0].value)
	if complete {
		first = 0
	}
	inChain := map[int64]bool{}
	for i, e := range chain {
		v, ok := counterOf(e.value)
		id, _ := opIDOf(e.value)
		inChain[id] = true
		if want := first + int64(i); !ok || v != want || e.version != want+1 {
			a.c.errorf("%s: version %d holds %v, want counter value %d at version %d", key, e.version, e, want, want+1)
		}
		if o := a.c.h.get(id); o != nil {
			if o.n != v {
				a.c.errorf("%s: %v written by %v, which meant to write %d", key, e, o, o.n)
			}
			if !o.acked {
				a.fate[id] = e.mod
			}
		}
		if i < len(logs) {
			if l := logs[i]; l == nil || l.mod != e.mod || l.value != opValue(id) || l.version != 1 {
				a.c.errorf("TXN TORN: %s version %v has clog entry %v", key, e, l)
			} else {
				a.record(id, l.mod, l.key)
			}
		}
	}
	final := first + int64(len(chain)-1)
	var ackedIncr, unacked, unackedApplied int64
	for _, o := range ops {
		if o.kind != opIncr || o.counter != n {
			continue
		}
		switch {
		case o.acked && o.wrote && o.rev < chain[0].mod:
			// Overwritten below the floor.
		case o.acked && o.wrote:
			ackedIncr++
			if !inChain[o.id] {
				a.c.errorf("LOST: %v is not in the history of %s", o, key)
			}
		case o.acked:
			if inChain[o.id] {
				a.c.errorf("%v: its compare failed, yet it wrote the counter", o)
			}
		default:
			unacked++
			if inChain[o.id] {
				unackedApplied++
			} else if complete {
				a.fate[o.id] = 0
			}
			// else: it may have been applied below the floor.
		}
	}
	// The init op counts among the acknowledged increments (it wrote 0).
	if ackedIncr+unackedApplied != int64(len(chain)) || unackedApplied > unacked {
		a.c.errorf("%s: value %d, %d versions since the floor, but %d acknowledged writes (init included) and %d of %d unacknowledged increments applied", key, final, len(chain), ackedIncr, unackedApplied, unacked)
	}
	return final
}

// checkRealTime checks that revisions follow real time: an op that started
// after another was acknowledged has a newer revision (or the same, when it
// wrote nothing).
func (c *checker) checkRealTime(ops []*op) {
	var acked []*op
	for _, o := range ops {
		// A compaction refused as already done carries no revision.
		if o.acked && !(o.kind == opCompact && o.rev == 0) {
			acked = append(acked, o)
		}
	}
	byEnd := append([]*op(nil), acked...)
	sort.Slice(byEnd, func(i, j int) bool { return byEnd[i].end.Before(byEnd[j].end) })
	sort.Slice(acked, func(i, j int) bool { return acked[i].start.Before(acked[j].start) })
	var newest *op
	j := 0
	for _, b := range acked {
		for ; j < len(byEnd) && byEnd[j].end.Before(b.start); j++ {
			if newest == nil || byEnd[j].rev > newest.rev {
				newest = byEnd[j]
			}
		}
		if newest == nil {
			continue
		}
		if b.rev < newest.rev || (b.wrote && b.rev == newest.rev) {
			c.errorf("REAL-TIME ORDER: %v started after %v was acknowledged", b, newest)
		}
	}
}
