package mvcc

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/plinthdb/plinth/internal/storage"
)

// compactBatchSize bounds the deletions committed at once, so compacting a
// large history never builds one huge batch.
const compactBatchSize = 4096

// compactor deletes the versions that a compaction made unreachable. It runs
// on its own goroutine, owned by the Store, which starts it in Open and stops
// it in Close.
//
// After a compaction at rev, a read at any revision >= rev must still see the
// same answer, so for each key it keeps the newest version at or before rev
// (unless that version is a tombstone) and every version after rev. It never
// touches the latest space, nor the history entry of a key's live version,
// which a later put assumes is there (see keys.go). Older
// versions of a key are deleted before its tombstone, so a concurrent reader
// never finds an old version with the tombstone above it gone.
type compactor struct {
	db     *pebble.DB
	logger *slog.Logger
	// keysVisited counts the keys whose histories compactions looked at,
	// for tests of what compaction costs.
	keysVisited atomic.Int64

	// hold, when above 0, is the revision below which compaction may
	// delete for now, whatever it was asked for (see Store.HoldEvents).
	hold *atomic.Int64

	mu      sync.Mutex // guards the fields below; never held across I/O
	done    int64      // newest compaction revision fully applied
	want    int64      // newest compaction revision asked for
	waiters map[int64]chan struct{}
	wake    chan struct{}
	stopC   chan struct{}
	stopped chan struct{}
}

// newCompactor starts a compactor that has finished compacting up to done.
// waiters, when not nil, are done channels taken from a stopped compactor:
// those up to done are closed, the others wait for this one.
func newCompactor(db *pebble.DB, logger *slog.Logger, done int64, waiters map[int64]chan struct{}, hold *atomic.Int64) *compactor {
	c := &compactor{
		db: db, logger: logger, hold: hold, done: done, want: done,
		waiters: map[int64]chan struct{}{},
		wake:    make(chan struct{}, 1),
		stopC:   make(chan struct{}),
		stopped: make(chan struct{}),
	}
	for r, ch := range waiters {
		if r <= done {
			close(ch)
		} else {
			c.waiters[r] = ch
		}
	}
	go c.run()
	return c
}

// takeWaiters removes and returns the done channels not closed yet. Call it
// after stop.
func (c *compactor) takeWaiters() map[int64]chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.waiters
	c.waiters = map[int64]chan struct{}{}
	return w
}

func (c *compactor) schedule(rev int64) {
	c.mu.Lock()
	if rev > c.want {
		c.want = rev
	}
	c.mu.Unlock()
	c.wakeUp()
}

// wakeUp has the compactor look again at what it may do.
func (c *compactor) wakeUp() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// doneRev returns the newest compaction revision fully applied: nothing at
// or above it has been deleted.
func (c *compactor) doneRev() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// doneCh returns a channel closed once compaction up to rev has finished.
func (c *compactor) doneCh(rev int64) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch, ok := c.waiters[rev]
	if !ok {
		ch = make(chan struct{})
		if rev <= c.done {
			close(ch)
			return ch
		}
		c.waiters[rev] = ch
	}
	return ch
}

func (c *compactor) stop() {
	close(c.stopC)
	<-c.stopped
}

func (c *compactor) run() {
	defer close(c.stopped)
	for {
		c.mu.Lock()
		done, want := c.done, c.want
		c.mu.Unlock()
		if h := c.hold.Load(); h > 0 && h < want {
			// Compacting to h first is a compaction in its own
			// right: reads at h and after keep their answers.
			want = h
		}
		if want > done {
			if err := c.compact(done, want); err != nil {
				select {
				case <-c.stopC:
					return
				default:
				}
				c.logger.Error("compaction failed; retrying on the next compaction request", "revision", want, "err", err)
			} else {
				c.finish(want)
				continue
			}
		}
		select {
		case <-c.stopC:
			return
		case <-c.wake:
		}
	}
}

func (c *compactor) finish(rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = rev
	for r, ch := range c.waiters {
		if r <= rev {
			close(ch)
			delete(c.waiters, r)
		}
	}
}

// compact deletes every version unreachable by reads at revisions >= rev,
// and the events of revisions below rev (see events.go). done is the
// compaction revision finished before.
//
// Only keys changed after done can have versions that rev makes unreachable:
// for any other key, the newest version at or before rev is its newest at or
// before done, and the compaction to done deleted what lay below it. The
// event index lists those keys, so compaction visits them alone and its cost
// follows the changes since the last compaction, not the size of the store.
// A store whose event index starts after done (written before the index
// existed) is walked whole, once.
//
// It decides from one snapshot while puts and deletes go on, which add
// versions newer than rev and may copy a key's live first version into
// history. Either way, history's entry under the live version's revision in
// the snapshot is what reads at rev need once that version is superseded, so
// compaction deletes only older versions than the snapshot's live one.
func (c *compactor) compact(done, rev int64) error {
	snap := c.db.NewSnapshot()
	defer func() { _ = snap.Close() }()
	iter, err := snap.NewIter(&pebble.IterOptions{
		LowerBound: []byte{storage.PrefixHistory},
		UpperBound: []byte{storage.PrefixHistory + 1},
	})
	if err != nil {
		return fmt.Errorf("mvcc: compact to %d: %w", rev, err)
	}
	defer func() { _ = iter.Close() }()

	b := c.db.NewBatch()
	defer func() { _ = b.Close() }()
	kc := keyCompaction{snap: snap, iter: iter, b: b, rev: rev}
	changed, indexed, err := changedKeys(snap, done, rev)
	if err != nil {
		return fmt.Errorf("mvcc: compact to %d: %w", rev, err)
	}
	if indexed {
		for _, key := range changed {
			if err := c.checkStop(rev); err != nil {
				return err
			}
			if _, err := kc.compactKey(key, historyPrefix(key)); err != nil {
				return err
			}
			if err := kc.flushIfFull(); err != nil {
				return err
			}
		}
	} else {
		var prefix []byte
		valid := iter.First()
		for valid {
			if err := c.checkStop(rev); err != nil {
				return err
			}
			k := iter.Key()
			prefix = append(prefix[:0], k[:historyUserPrefixLen(k)]...)
			key, _, err := decodeHistoryKey(k)
			if err != nil {
				return fmt.Errorf("mvcc: compact to %d: %w", rev, err)
			}
			if valid, err = kc.compactKey(key, prefix); err != nil {
				return err
			}
			if err := kc.flushIfFull(); err != nil {
				return err
			}
		}
	}
	c.keysVisited.Add(int64(kc.visited))
	if err := iter.Error(); err != nil {
		return fmt.Errorf("mvcc: compact to %d: %w", rev, err)
	}
	// Watchers may start at rev itself, so its events stay.
	if err := b.DeleteRange([]byte{storage.PrefixEvents}, eventKey(rev, 0), nil); err != nil {
		return fmt.Errorf("mvcc: compact events to %d: %w", rev, err)
	}
	if err := storage.PutMetaUint64(b, storage.MetaCompactDone, uint64(rev)); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("mvcc: compact to %d: %w", rev, err)
	}
	return nil
}

func (c *compactor) checkStop(rev int64) error {
	select {
	case <-c.stopC:
		return fmt.Errorf("mvcc: compaction to %d stopped", rev)
	default:
		return nil
	}
}

// changedKeys returns, in order and once each, the keys that changed at
// revisions after done up to rev, from the event index in snap; indexed is
// false when the index does not reach back to done.
func changedKeys(snap *pebble.Snapshot, done, rev int64) (keys [][]byte, indexed bool, err error) {
	from := max(done+1, 2) // revision 1 is the empty store: it has no events
	first, err := loadIndexedFrom(snap, rev)
	if err != nil {
		return nil, false, err
	}
	if first > from {
		return nil, false, nil
	}
	iter, err := snap.NewIter(&pebble.IterOptions{LowerBound: eventKey(from, 0), UpperBound: eventKey(rev+1, 0)})
	if err != nil {
		return nil, false, err
	}
	defer func() { _ = iter.Close() }()
	seen := map[string]bool{}
	for valid := iter.First(); valid; valid = iter.Next() {
		v, err := iter.ValueAndErr()
		if err != nil {
			return nil, false, err
		}
		_, _, key, _, err := decodeEvent(iter.Key(), v)
		if err != nil {
			return nil, false, err
		}
		if !seen[string(key)] {
			seen[string(key)] = true
			keys = append(keys, append([]byte(nil), key...))
		}
	}
	if err := iter.Error(); err != nil {
		return nil, false, err
	}
	slices.SortFunc(keys, bytes.Compare)
	return keys, true, nil
}

// keyCompaction is one compaction's pass over keys' histories.
type keyCompaction struct {
	snap    *pebble.Snapshot
	iter    *pebble.Iterator // over history, in snap
	b       *pebble.Batch
	rev     int64
	doomed  [][]byte // the current key's unreachable versions, newest first
	rec     record
	visited int
}

// compactKey stages the deletion of key's versions that reads at revisions
// >= rev cannot reach; prefix is key's history prefix. It returns whether
// the history iterator is left on a valid entry: the first of the next key.
func (kc *keyCompaction) compactKey(key, prefix []byte) (valid bool, err error) {
	rev := kc.rev
	kc.visited++
	var live int64 // the live version's revision, 0 if the key is deleted
	if _, err := withLatest(kc.snap, key, func(r *record) { live = r.modRevision }); err != nil {
		return false, fmt.Errorf("mvcc: compact to %d: %w", rev, err)
	}
	// keep: the newest version at or before rev is in history, and
	// survives unless it is a tombstone. When the live version is that
	// old, it is the one reads need, and all of history before it goes.
	keep := live == 0 || live > rev
	if keep {
		valid = kc.iter.SeekGE(appendInvertedRev(prefix, rev))
	} else {
		valid = kc.iter.SeekGE(appendInvertedRev(prefix, live-1))
	}
	kc.doomed = kc.doomed[:0]
	for ; valid; valid = kc.iter.Next() {
		k := kc.iter.Key()
		if len(k) != len(prefix)+8 || !bytes.HasPrefix(k, prefix) {
			break
		}
		if keep {
			keep = false
			v, err := kc.iter.ValueAndErr()
			if err != nil {
				return false, fmt.Errorf("mvcc: compact to %d: %w", rev, err)
			}
			if err := decodeRecord(v, &kc.rec); err != nil {
				return false, err
			}
			if !kc.rec.tombstone {
				continue
			}
		}
		kc.doomed = append(kc.doomed, append([]byte(nil), k...))
	}
	// Older versions go before the tombstone above them, so a concurrent
	// reader never finds an old version with its tombstone gone.
	for i := len(kc.doomed) - 1; i >= 0; i-- {
		if err := kc.b.Delete(kc.doomed[i], nil); err != nil {
			return false, fmt.Errorf("mvcc: compact to %d: %w", rev, err)
		}
	}
	return valid, nil
}

// flushIfFull commits the deletions staged so far once they are many.
func (kc *keyCompaction) flushIfFull() error {
	if kc.b.Count() < compactBatchSize {
		return nil
	}
	if err := kc.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("mvcc: compact to %d: %w", kc.rev, err)
	}
	kc.b.Reset()
	return nil
}
