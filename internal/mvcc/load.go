package mvcc

import (
	"errors"
	"fmt"
	"math"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// Loader writes a history that another store made (an etcd snapshot's) into
// the key spaces of an empty database, so that the result is what this store
// would hold had it applied that history itself and compacted it at the same
// revision: the latest and history spaces of keys.go, the event index of
// events.go, and the revisions.
//
// Changes are given in revision order (main, then sub-revision), each with
// its whole version as the other store kept it: versions, create and mod
// revisions and leases are taken as given, never recomputed, because a
// compacted history lacks the changes they were counted from. Changes at or
// after the compaction revision get events, as in a store that compacted
// there; older ones are the versions a compaction kept, and have none.
//
// It writes in batches committed without sync; the caller builds a data dir
// that nothing serves yet and syncs once at the end. Memory grows with the
// number of keys (a key, a revision and a version each), not with values.
type Loader struct {
	db         *pebble.DB
	b          *pebble.Batch
	compactRev int64
	keys       map[string]*loadedKey
	group      []Change // the changes of the current main revision
	lastRev    int64
	buf        []byte
	keyBuf     []byte
}

// loadedKey is what the loader remembers of a key: its newest change.
type loadedKey struct {
	rev     int64 // main revision of the newest change
	version int64
	lease   int64
	live    bool // the newest change is a put
}

// Change is one change of another store's history.
type Change struct {
	Rev, Sub  int64
	Tombstone bool
	// KV is the version written (a put), or for a tombstone the key alone.
	KV *mvccpb.KeyValue
}

// LoadedKey is a live key of a loaded store, as Finish reports it.
type LoadedKey struct {
	Key   []byte
	Rev   int64 // mod revision of its live version
	Lease int64
}

// loadBatchSize bounds the writes a loader commits at once (a variable for
// tests, which make it small).
var loadBatchSize uint32 = 8192

// NewLoader starts loading into db, which must hold no mvcc state. compactRev
// is the compaction revision of the history (-1 if it was never compacted).
func NewLoader(db *pebble.DB, compactRev int64) *Loader {
	return &Loader{db: db, b: db.NewBatch(), compactRev: compactRev, keys: map[string]*loadedKey{}}
}

// ErrOutOfOrder marks changes not given in revision order.
var ErrOutOfOrder = errors.New("mvcc: loaded changes out of revision order")

// Add loads the next change. A change at a lower revision than the one before
// fails with ErrOutOfOrder.
func (l *Loader) Add(c Change) error {
	if c.KV == nil || len(c.KV.Key) == 0 {
		return fmt.Errorf("mvcc: load change at %d_%d: no key: %w", c.Rev, c.Sub, storage.ErrCorrupt)
	}
	if c.Rev < 1 || c.Sub < 0 || c.Sub > math.MaxUint32 {
		return fmt.Errorf("mvcc: load change of %q: revision %d_%d out of range: %w", c.KV.Key, c.Rev, c.Sub, storage.ErrCorrupt)
	}
	if len(l.group) > 0 {
		last := l.group[len(l.group)-1]
		if c.Rev < last.Rev || (c.Rev == last.Rev && c.Sub <= last.Sub) {
			return fmt.Errorf("mvcc: change %d_%d after %d_%d: %w", c.Rev, c.Sub, last.Rev, last.Sub, ErrOutOfOrder)
		}
		if c.Rev != last.Rev {
			if err := l.flushGroup(); err != nil {
				return err
			}
		}
	} else if c.Rev <= l.lastRev {
		return fmt.Errorf("mvcc: change %d_%d after revision %d: %w", c.Rev, c.Sub, l.lastRev, ErrOutOfOrder)
	}
	if !c.Tombstone && c.KV.ModRevision != c.Rev {
		return fmt.Errorf("mvcc: load change of %q at %d: mod revision %d: %w", c.KV.Key, c.Rev, c.KV.ModRevision, storage.ErrCorrupt)
	}
	l.group = append(l.group, c)
	return nil
}

// flushGroup writes the changes of one main revision. Several changes of one
// key in one revision (a delete to the end of the key space and a put in one
// transaction) share its history entry, which holds the last; an earlier
// put's event then carries its version inline (see events.go).
func (l *Loader) flushGroup() error {
	if len(l.group) == 0 {
		return nil
	}
	rev := l.group[0].Rev
	lastOf := make(map[string]int, len(l.group))
	for i, c := range l.group {
		lastOf[string(c.KV.Key)] = i
	}
	for i, c := range l.group {
		key := c.KV.Key
		rec := record{tombstone: c.Tombstone, modRevision: rev}
		if !c.Tombstone {
			rec = record{createRevision: c.KV.CreateRevision, modRevision: rev, version: c.KV.Version, lease: c.KV.Lease, value: c.KV.Value}
		}
		last := lastOf[string(key)] == i
		// A deletion at the compaction revision leaves its event only:
		// this store's compaction drops its tombstone (etcd 3.6 keeps
		// it), and reads at the compaction revision or later find no
		// older version of the key either way.
		if last && c.Tombstone && rev == l.compactRev {
			l.keys[string(key)] = &loadedKey{rev: rev}
		} else if last {
			l.buf = appendRecord(l.buf[:0], &rec)
			l.keyBuf = appendHistoryKey(l.keyBuf[:0], key, rev)
			if err := l.b.Set(l.keyBuf, l.buf, nil); err != nil {
				return fmt.Errorf("mvcc: load %q at %d: %w", key, rev, err)
			}
			k := l.keys[string(key)]
			if k == nil {
				k = &loadedKey{}
				l.keys[string(key)] = k
			}
			*k = loadedKey{rev: rev, version: rec.version, lease: rec.lease, live: !c.Tombstone}
		}
		if rev < l.compactRev {
			continue // a compaction at compactRev dropped its event
		}
		kind := eventPut
		switch {
		case c.Tombstone:
			kind = eventDelete
		case !last:
			kind = eventPutInline
		}
		l.keyBuf = appendEventKey(l.keyBuf[:0], rev, uint32(c.Sub))
		l.buf = appendEventValue(l.buf[:0], kind, key)
		if kind == eventPutInline {
			l.buf = appendRecord(l.buf, &rec)
		}
		if err := l.b.Set(l.keyBuf, l.buf, nil); err != nil {
			return fmt.Errorf("mvcc: load event of %q at %d: %w", key, rev, err)
		}
	}
	l.lastRev = rev
	l.group = l.group[:0]
	return l.commitIfFull()
}

func (l *Loader) commitIfFull() error {
	if l.b.Count() < loadBatchSize {
		return nil
	}
	if err := l.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("mvcc: load: commit: %w", err)
	}
	l.b.Reset()
	return nil
}

// Finish writes what only the end of the history decides: each live key's
// newest version into the latest space (a live first version leaves
// history, as in a store that wrote it), the current revision rev (raised to
// the last change's and to the compaction revision, as etcd does when it
// opens a store) and the compaction revisions. compactDone is the compaction
// the other store had physically finished: when it is below the compaction
// revision, the store's compactor finishes the job when it opens. It returns
// the revision and the live keys, in no particular order, with their leases.
// The loader must not be used afterwards.
func (l *Loader) Finish(rev, compactDone int64) (int64, []LoadedKey, error) {
	defer func() { _ = l.b.Close() }()
	if err := l.flushGroup(); err != nil {
		return 0, nil, err
	}
	rev = max(rev, l.lastRev, l.compactRev, 1)
	// Every version is committed before the live ones are read back; the
	// writes that follow touch only keys already read.
	if err := l.b.Commit(pebble.NoSync); err != nil {
		return 0, nil, fmt.Errorf("mvcc: load: commit: %w", err)
	}
	l.b.Reset()
	var live []LoadedKey
	for key, k := range l.keys {
		if !k.live {
			continue
		}
		live = append(live, LoadedKey{Key: []byte(key), Rev: k.rev, Lease: k.lease})
		hk := historyKey([]byte(key), k.rev)
		v, closer, err := l.db.Get(hk)
		if err != nil {
			return 0, nil, fmt.Errorf("mvcc: load: newest version of %q: %w", key, err)
		}
		err = l.b.Set(latestKey([]byte(key)), v, nil)
		_ = closer.Close()
		if err != nil {
			return 0, nil, fmt.Errorf("mvcc: load %q: %w", key, err)
		}
		if k.version == 1 {
			if err := l.b.Delete(hk, nil); err != nil {
				return 0, nil, fmt.Errorf("mvcc: load %q: %w", key, err)
			}
		}
		if err := l.commitIfFull(); err != nil {
			return 0, nil, err
		}
	}
	if err := storage.PutMetaUint64(l.b, storage.MetaRevision, uint64(rev)); err != nil {
		return 0, nil, err
	}
	if l.compactRev >= 0 {
		if err := storage.PutMetaUint64(l.b, storage.MetaCompacted, uint64(l.compactRev)); err != nil {
			return 0, nil, err
		}
		if err := storage.PutMetaUint64(l.b, storage.MetaCompactDone, uint64(min(max(compactDone, 0), l.compactRev))); err != nil {
			return 0, nil, err
		}
	}
	if err := l.b.Commit(pebble.NoSync); err != nil {
		return 0, nil, fmt.Errorf("mvcc: load: commit: %w", err)
	}
	return rev, live, nil
}
