// Package storage owns plinth's one Pebble database. It divides the key space
// among the packages that share it (the Raft log, metadata, and the MVCC
// store), and keeps the Raft log and hard state behind raft.Storage (LogStore).
//
// storage knows nothing of requests or revisions: the packages above it own the
// meaning of their key spaces. It never syncs on its own initiative: the caller
// decides which batches are synced, because that decision is what makes a write
// acknowledged (see DESIGN.md: an acknowledged write is on a synced log).
package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Key space prefixes. Every Pebble key starts with exactly one of these bytes,
// so the spaces never interleave and each can be scanned or cleared alone.
const (
	// PrefixRaftLog holds Raft entries: PrefixRaftLog + index (8 bytes, big
	// endian) -> raftpb.Entry.
	PrefixRaftLog byte = 0x01
	// PrefixMeta holds small named values: PrefixMeta + name -> value.
	PrefixMeta byte = 0x02
	// PrefixMembers holds the cluster's membership, a state machine record
	// per member: PrefixMembers + member ID (8 bytes, big endian) -> member.
	PrefixMembers byte = 0x03
	// PrefixAlarms holds the cluster's active alarms (owned by alarm):
	// PrefixAlarms + member ID (8 bytes, big endian) + alarm type (4 bytes,
	// big endian) -> "".
	PrefixAlarms byte = 0x04
	// PrefixLatest holds the newest live version of each key (owned by mvcc).
	PrefixLatest byte = 0x10
	// PrefixHistory holds the retained versions of each key, but a live
	// first version, and tombstones (owned by mvcc).
	PrefixHistory byte = 0x11
	// PrefixEvents holds the events of every retained revision in revision
	// order, for watch (owned by mvcc).
	PrefixEvents byte = 0x12
	// PrefixLeases holds the lease table (owned by lease): PrefixLeases +
	// lease ID (8 bytes, big endian) -> granted TTL and remaining TTL.
	PrefixLeases byte = 0x20
	// PrefixLeaseKeys indexes the keys attached to each lease (owned by
	// lease): PrefixLeaseKeys + lease ID (8 bytes, big endian) + key -> "".
	PrefixLeaseKeys byte = 0x21
	// PrefixLeaseClock holds, for this member alone, when each lease's
	// persisted remaining TTL was last written here (owned by lease):
	// PrefixLeaseClock + lease ID (8 bytes, big endian) -> the remaining TTL
	// and the wall-clock time it was written at. See LocalSpans.
	PrefixLeaseClock byte = 0x22
)

// Names of the metadata values kept under PrefixMeta.
const (
	MetaHardState    = "raft/hardstate"
	MetaConfState    = "raft/confstate"
	MetaLogTruncated = "raft/truncated" // index and term of the last entry removed from the log
	MetaAppliedIndex = "apply/index"
	MetaRevision     = "mvcc/revision"
	MetaCompacted    = "mvcc/compacted" // compaction revision that reads obey
	MetaCompactDone  = "mvcc/compact-done"
	MetaClusterID    = "cluster/id"
	MetaMemberID     = "cluster/member"
	// MetaJoined marks a member that joined a running cluster instead of
	// bootstrapping one: joinedExisting, or joinedPromoting while it still
	// has to promote itself (plinth --join).
	MetaJoined = "cluster/joined"
)

// MetaKey returns the Pebble key of a metadata value.
func MetaKey(name string) []byte {
	k := make([]byte, 0, 1+len(name))
	k = append(k, PrefixMeta)
	return append(k, name...)
}

// Memory budget of the database. The cache holds the memtables' reservation
// (up to MemTableStopWritesThreshold of them) plus the blocks it caches.
const (
	memTableSize   = 32 << 20
	blockCacheSize = 512 << 20
)

// Open opens (creating if needed) the Pebble database in dir, tuned for plinth:
// bloom filters on every level, because MVCC puts look up keys that often do
// not exist yet, and a block cache well above the memtables' size, because
// Pebble reserves memtable memory out of the block cache: a cache no larger
// than the memtables caches nothing, and every put's lookup of its key's
// newest version would read and decompress blocks from disk. pacer, when not
// nil, spaces the WAL's syncs (see SyncPacer).
func Open(dir string, logger *slog.Logger, pacer *SyncPacer) (*pebble.DB, error) {
	return OpenFS(vfs.Default, dir, logger, pacer)
}

// OpenFS is Open on the file system fs: the operating system's (vfs.Default)
// in production; tests run members over an in-memory file system that loses
// what was not synced, or one that injects I/O errors.
func OpenFS(fs vfs.FS, dir string, logger *slog.Logger, pacer *SyncPacer) (*pebble.DB, error) {
	opts := tunedOptions()
	opts.FS = fs
	opts.WithFSDefaults() // Pebble's disk health checks, as with no FS given
	opts.Logger = pebbleLogger{logger}
	opts.Cache = pebble.NewCache(blockCacheSize)
	if pacer != nil {
		opts.WALMinSyncInterval = pacer.minSyncInterval
	}
	defer opts.Cache.Unref()
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("storage: open pebble at %s: %w", dir, err)
	}
	return db, nil
}

// tunedOptions are the options of Open that shape the data files (see Open),
// without the process-wide parts (logger, cache, sync pacing).
func tunedOptions() *pebble.Options {
	opts := &pebble.Options{
		MemTableSize:                memTableSize,
		MemTableStopWritesThreshold: 4,
		L0CompactionThreshold:       4,
		L0StopWritesThreshold:       1000,
		LBaseMaxBytes:               64 << 20,
	}
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		opts.Levels[i].BlockSize = 32 << 10
	}
	return opts
}

// TableWriterOptions are the options to write an sstable in the given format
// for ingestion into a database opened by Open: the comparer, merger, bloom
// filters and block size of the database's bottom level, where an ingested
// table that replaces whole key spaces usually lands.
func TableWriterOptions(format sstable.TableFormat) sstable.WriterOptions {
	opts := tunedOptions()
	opts.EnsureDefaults()
	return opts.MakeWriterOptions(len(opts.Levels)-1, format)
}

// GetMeta reads a metadata value; found is false when it was never written.
func GetMeta(r pebble.Reader, name string) (value []byte, found bool, err error) {
	v, closer, err := r.Get(MetaKey(name))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("storage: read %s: %w", name, err)
	}
	out := append([]byte(nil), v...)
	return out, true, closer.Close()
}

// GetMetaUint64 reads a metadata value written by PutMetaUint64 (0 if absent).
func GetMetaUint64(r pebble.Reader, name string) (uint64, error) {
	v, found, err := GetMeta(r, name)
	if err != nil || !found {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("storage: %s is %d bytes, want 8: %w", name, len(v), ErrCorrupt)
	}
	return binary.BigEndian.Uint64(v), nil
}

// PutMetaUint64 writes a uint64 metadata value into w.
func PutMetaUint64(w pebble.Writer, name string, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	if err := w.Set(MetaKey(name), buf[:], nil); err != nil {
		return fmt.Errorf("storage: write %s: %w", name, err)
	}
	return nil
}

// ErrCorrupt marks data on disk that plinth did not write: a decoding failure
// of a stored value. Callers can tell it from I/O errors with errors.Is.
var ErrCorrupt = errors.New("storage: corrupt data")

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf is how Pebble reports what it cannot go on after, a failed write
// or fsync of its WAL or MANIFEST among them. It must not return: Pebble
// would carry on as if the commit had succeeded, and the raft loop would
// count unsynced entries as persisted. The process stops here, so that a
// failed fsync is never retried and nothing it covered is acknowledged; on
// restart Pebble recovers what was synced.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...))
}

// closeQuietly is for read paths where the value has been copied already.
func closeQuietly(c io.Closer) { _ = c.Close() }

// DatabaseDir is where a member keeps its Pebble database inside its data
// dir.
func DatabaseDir(dataDir string) string { return filepath.Join(dataDir, "db") }
