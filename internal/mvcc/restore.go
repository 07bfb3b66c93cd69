package mvcc

import (
	"errors"
	"fmt"
)

// Restore replaces the store's state with the one that install writes into
// the database underneath it: the installation of a Raft snapshot, which
// replaces the key spaces and revisions of mvcc wholesale (see package
// snapshot). Everything the store keeps in memory is then reloaded from the
// database: the revision, the compaction revision, the key cache (emptied),
// the key filter (rebuilt from the new latest space: a stale filter would
// answer "never written" for an installed key, and its next put would be
// taken for a create, corrupting its version and create revision) and the
// compactor (resumed from the installed state).
//
// Restore must be called from the goroutine that writes (the apply loop),
// with no Batch open. Reads may run meanwhile: they wait while install runs,
// so that none sees the installed data with the old revision or the reverse.
// That is the one place the view lock is held across I/O; a snapshot install
// is rare and replaces the whole state.
//
// Background work that reads or rewrites the replaced spaces (the key
// filter's build, the compactor) is stopped before install runs and started
// again afterwards, whether install succeeded or not. A nil install only
// reloads (see Reload). An error from loading the state back means the
// in-memory state no longer matches the database: the member must stop.
func (s *Store) Restore(install func() error) error {
	waiters := s.stopBackground()
	s.keys.reset()

	s.viewMu.Lock()
	var installErr error
	if install != nil {
		installErr = install()
	}
	revs, loadErr := loadRevisions(s.db)
	var indexedFrom int64
	if loadErr == nil {
		indexedFrom, loadErr = loadIndexedFrom(s.db, revs.rev)
	}
	if loadErr == nil {
		s.rev, s.compactRev, s.indexedFrom = revs.rev, revs.compactRev, indexedFrom
	}
	// The new compactor is in place before readers resume: FollowEvents
	// asks it how far compaction has deleted.
	s.startBackground(revs, waiters)
	s.viewMu.Unlock()

	if installErr != nil {
		installErr = fmt.Errorf("mvcc: install: %w", installErr)
	}
	if loadErr != nil {
		loadErr = fmt.Errorf("mvcc: reload after install: %w", loadErr)
	}
	return errors.Join(installErr, loadErr)
}

// Reload reloads the store's in-memory state from the database, after the
// caller replaced its contents (see Restore, which is to be preferred: it
// stops background work before the contents change, and makes readers wait
// for the revision to catch up with the data).
func (s *Store) Reload() error { return s.Restore(nil) }
