// Package mvcc keeps every version of every key: the revisioned key-value
// store behind the etcd KV API. It executes Range, Put, DeleteRange, Txn and
// Compact with etcd's semantics (one revision per write request, versions,
// create and mod revisions, compaction) on top of Pebble.
//
// Writes happen only through a Batch, which the apply loop fills with the
// requests of committed Raft entries and commits together with the applied
// index (see package apply). mvcc never syncs: durability comes from the Raft
// log, which is synced before an entry is applied. mvcc must never import the
// lease or auth packages; apply is where they meet.
package mvcc

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// Errors a request can fail with. The API layer maps them to etcd's rpctypes.
var (
	ErrCompacted     = errors.New("mvcc: required revision has been compacted")
	ErrFutureRev     = errors.New("mvcc: required revision is a future revision")
	ErrKeyNotFound   = errors.New("mvcc: key not found")
	ErrLeaseNotFound = errors.New("mvcc: requested lease not found")
	// ErrDeleteTooLarge refuses a request whose deletions would stage more
	// than the store's bound in one batch (see maxDeleteBytes).
	ErrDeleteTooLarge = errors.New("mvcc: the range to delete is too large for one request")
)

// maxDeleteBytes bounds what one request's deletions may stage in a Pebble
// batch. Deleting a key writes its tombstone, an event and the removal of its
// latest version, and copies a first version's value into history, so a
// delete of a large range stages about as much as the range holds, and
// Pebble panics on a batch of 4 GiB: every member would fail applying the
// entry, and again on every replay. A refused request changes nothing, on
// every member alike (the cost is read from the state the request sees).
const maxDeleteBytes = 512 << 20

// Store is the MVCC key-value store. Reads may run on any goroutine; writes go
// through Batch, from one goroutine at a time (the apply loop).
type Store struct {
	db     *pebble.DB
	logger *slog.Logger

	// viewMu makes a reader's revision and its view of Pebble agree: readers
	// take the revision and open their iterator under RLock, and a Batch
	// commits (without fsync) and advances the revision under Lock. It is
	// never held across a sync or a scan.
	viewMu     sync.RWMutex
	rev        int64 // current revision; 1 on an empty store, as in etcd
	compactRev int64 // reads below this revision fail with ErrCompacted; -1 before any compaction
	// indexedFrom is the first revision of the event index when the store
	// was opened (see loadIndexedFrom).
	indexedFrom int64

	compactor *compactor
	// eventsHold is the revision from which the compactor keeps events for
	// FollowEvents' reader; 0 when none is held (see HoldEvents).
	eventsHold atomic.Int64
	keys       *keyCache  // owned by the write path (Batch), see keyCache
	filter     *keyFilter // see keyFilter
	stopC      chan struct{}
	filling    sync.WaitGroup // the goroutine building filter
	// maxDeleteBytes is maxDeleteBytes; tests lower it.
	maxDeleteBytes int64
}

// Open loads the store's revision from db and resumes an unfinished
// compaction.
func Open(db *pebble.DB, logger *slog.Logger) (*Store, error) {
	revs, err := loadRevisions(db)
	if err != nil {
		return nil, err
	}
	indexedFrom, err := loadIndexedFrom(db, revs.rev)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, logger: logger, rev: revs.rev, compactRev: revs.compactRev, indexedFrom: indexedFrom, keys: newKeyCache(keyCacheEntries, keyCacheBytes), maxDeleteBytes: maxDeleteBytes}
	s.startBackground(revs, nil)
	return s, nil
}

// revisions are the store's revisions as the database holds them.
type revisions struct {
	rev         int64
	compactRev  int64 // -1 before any compaction
	compactDone int64 // newest compaction physically finished
}

func loadRevisions(db pebble.Reader) (revisions, error) {
	rev, err := storage.GetMetaUint64(db, storage.MetaRevision)
	if err != nil {
		return revisions{}, err
	}
	if rev == 0 {
		rev = 1
	}
	// As in etcd, a store that was never compacted has compaction revision
	// -1, so that compacting at 0 succeeds once.
	compactRev := int64(-1)
	if _, found, err := storage.GetMeta(db, storage.MetaCompacted); err != nil {
		return revisions{}, err
	} else if found {
		c, err := storage.GetMetaUint64(db, storage.MetaCompacted)
		if err != nil {
			return revisions{}, err
		}
		compactRev = int64(c)
	}
	done, err := storage.GetMetaUint64(db, storage.MetaCompactDone)
	if err != nil {
		return revisions{}, err
	}
	return revisions{rev: int64(rev), compactRev: compactRev, compactDone: int64(done)}, nil
}

// startBackground starts building a new key filter from the database and a
// compactor that resumes an unfinished compaction; waiters are the pending
// compactions' done channels taken from a compactor that was stopped.
func (s *Store) startBackground(revs revisions, waiters map[int64]chan struct{}) {
	f := newKeyFilter(keyFilterKeys)
	stop := make(chan struct{})
	s.filter, s.stopC = f, stop
	s.filling.Add(1)
	go func() {
		defer s.filling.Done()
		f.fill(s.db, s.logger, stop)
	}()
	s.compactor = newCompactor(s.db, s.logger, revs.compactDone, waiters, &s.eventsHold)
	if revs.compactRev > revs.compactDone {
		s.compactor.schedule(revs.compactRev)
	}
}

// stopBackground stops the key filter's build and the compactor, and returns
// the compactor's waiters.
func (s *Store) stopBackground() map[int64]chan struct{} {
	close(s.stopC)
	s.filling.Wait()
	s.compactor.stop()
	return s.compactor.takeWaiters()
}

// Close stops background work (compaction, building the key filter). It does
// not close the Pebble database.
func (s *Store) Close() {
	s.stopBackground()
}

// Rev returns the current revision.
func (s *Store) Rev() int64 {
	s.viewMu.RLock()
	defer s.viewMu.RUnlock()
	return s.rev
}

// CompactRev returns the revision of the newest compaction.
func (s *Store) CompactRev() int64 {
	s.viewMu.RLock()
	defer s.viewMu.RUnlock()
	return s.compactRev
}

// Range executes a range request against committed state.
func (s *Store) Range(req *pb.RangeRequest) (*pb.RangeResponse, error) {
	s.viewMu.RLock()
	curRev := s.rev
	plan, err := planRange(req, curRev, s.compactRev)
	if err != nil {
		s.viewMu.RUnlock()
		return nil, err
	}
	if plan.pointLatest() {
		// The commonest read, one key now: a Get, done under the lock
		// because it has no iterator to pin its view.
		kv, err := getLatest(s.db, req.Key)
		s.viewMu.RUnlock()
		if err != nil {
			return nil, err
		}
		return plan.answerPoint(req, curRev, kv), nil
	}
	// Both cursors are opened under the lock, so that they see one state.
	c, err := plan.open(s.db)
	s.viewMu.RUnlock()
	if err != nil {
		return nil, err
	}
	return plan.run(c, req, curRev)
}
