package storage

import (
	"sync/atomic"
	"time"
)

// SyncPacer lets the writer of the Raft log space the WAL's syncs apart
// while it is under load: group commit. A sync costs the same CPU whatever it
// covers (about 90 µs on our 2-core machines, see docs/performance.md), so
// when many proposals are in flight, holding the next sync back briefly lets
// it cover more entries, for less CPU per write. A caller that is not under
// load sets no hold, so a lone client never waits for one.
//
// A hold only delays a sync that was asked for; it never skips one: a synced
// commit still returns only once its batch is on disk.
type SyncPacer struct {
	hold atomic.Int64 // nanoseconds
}

// HoldAfterSync sets how long the WAL waits after its next sync before it
// syncs again; 0 lets it sync again at once.
func (p *SyncPacer) HoldAfterSync(d time.Duration) { p.hold.Store(int64(d)) }

// minSyncInterval is Pebble's WALMinSyncInterval: Pebble asks it after each
// sync.
func (p *SyncPacer) minSyncInterval() time.Duration { return time.Duration(p.hold.Load()) }
