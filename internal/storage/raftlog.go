package storage

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The newest entries LogStore keeps in memory: tailCacheSize of them, and
// no more than tailCacheBytes of entry data (at least one entry; up to twice
// either bound between trims). Raft reads the newest entries again right
// after appending them (to apply them, and later to send them to followers),
// so they are served without a Pebble read. The byte bound matters for large
// entries: 4096 transactions of 128 puts of 1 KB (512 MiB), or of values
// near --max-request-bytes (gigabytes), would otherwise stay in the heap.
const (
	tailCacheSize  = 4096
	tailCacheBytes = 32 << 20
)

// LogStore keeps the Raft log, hard state and configuration in Pebble and
// implements raft.Storage over them.
//
// Writes are staged into a caller's batch (Append, Truncate) and only become
// visible to raft after the caller committed that batch and called the matching
// After* method: raft must never read an entry that is not yet durable.
type LogStore struct {
	db *pebble.DB
	// snapshot makes the Raft snapshot that Snapshot returns; nil when
	// this member cannot send snapshots (see SetSnapshotter).
	snapshot func() (*pb.Snapshot, error)

	// mu guards every field below. It is held only for memory operations,
	// never across a Pebble read, except in Entries where a cache miss reads
	// the log (raft calls Storage from a single goroutine anyway).
	mu         sync.Mutex
	hardState  *pb.HardState
	confState  *pb.ConfState
	truncIndex uint64 // index of the last entry removed; the log starts at truncIndex+1
	truncTerm  uint64
	lastIndex  uint64
	tail       []*pb.Entry // the newest entries, contiguous, ending at lastIndex
	tailBytes  int         // the entry data tail holds
}

var _ raft.Storage = (*LogStore)(nil)

// OpenLogStore loads the log's bounds and hard state from db.
func OpenLogStore(db *pebble.DB) (*LogStore, error) {
	s := &LogStore{db: db}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload loads the log's bounds, hard state and configuration from db again,
// and empties the cache of recent entries. Call it after installing a
// snapshot, which replaced the log, its truncation mark and the
// configuration underneath the LogStore. raft must not call into the
// LogStore meanwhile (the raft loop, which owns both, calls Reload).
func (s *LogStore) Reload() error {
	hardState := &pb.HardState{}
	if v, found, err := GetMeta(s.db, MetaHardState); err != nil {
		return err
	} else if found {
		if err := proto.Unmarshal(v, hardState); err != nil {
			return fmt.Errorf("storage: decode hard state: %w: %v", ErrCorrupt, err)
		}
	}
	confState, err := GetConfState(s.db)
	if err != nil {
		return err
	}
	var truncIndex, truncTerm uint64
	if v, found, err := GetMeta(s.db, MetaLogTruncated); err != nil {
		return err
	} else if found {
		if len(v) != 16 {
			return fmt.Errorf("storage: truncation mark is %d bytes: %w", len(v), ErrCorrupt)
		}
		truncIndex = binary.BigEndian.Uint64(v)
		truncTerm = binary.BigEndian.Uint64(v[8:])
	}
	// A snapshot's install writes the truncation mark and the state
	// before the hard state that raises the commit index to it: after a
	// crash in between, the commit index is below the snapshot. Entries up
	// to the mark are committed (the snapshot held only committed state),
	// so raising it is what Raft itself does on restore.
	if hardState.GetCommit() < truncIndex {
		hardState.Commit = &truncIndex
	}
	lastIndex := truncIndex
	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{PrefixRaftLog}, UpperBound: []byte{PrefixRaftLog + 1}})
	if err != nil {
		return fmt.Errorf("storage: scan raft log: %w", err)
	}
	if iter.Last() {
		idx, err := decodeLogKey(iter.Key())
		if err != nil {
			_ = iter.Close()
			return err
		}
		if idx > lastIndex {
			lastIndex = idx
		}
	}
	if err := iter.Close(); err != nil {
		return fmt.Errorf("storage: scan raft log: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hardState, s.confState = hardState, confState
	s.truncIndex, s.truncTerm, s.lastIndex = truncIndex, truncTerm, lastIndex
	clear(s.tail)
	s.tail, s.tailBytes = s.tail[:0], 0
	return nil
}

// LogKey returns the Pebble key of the entry at index.
func LogKey(index uint64) []byte {
	var k [9]byte
	k[0] = PrefixRaftLog
	binary.BigEndian.PutUint64(k[1:], index)
	return k[:]
}

func decodeLogKey(k []byte) (uint64, error) {
	if len(k) != 9 || k[0] != PrefixRaftLog {
		return 0, fmt.Errorf("storage: raft log key %x: %w", k, ErrCorrupt)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}

// InitialState implements raft.Storage.
func (s *LogStore) InitialState() (*pb.HardState, *pb.ConfState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.CloneOf(s.hardState), proto.CloneOf(s.confState), nil
}

// ConfState returns the last configuration saved with SaveConfState.
func (s *LogStore) ConfState() *pb.ConfState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.CloneOf(s.confState)
}

// FirstIndex implements raft.Storage.
func (s *LogStore) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.truncIndex + 1, nil
}

// LastIndex implements raft.Storage.
func (s *LogStore) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastIndex, nil
}

// Term implements raft.Storage.
func (s *LogStore) Term(i uint64) (uint64, error) {
	s.mu.Lock()
	switch {
	case i == s.truncIndex:
		t := s.truncTerm
		s.mu.Unlock()
		return t, nil
	case i < s.truncIndex:
		s.mu.Unlock()
		return 0, raft.ErrCompacted
	case i > s.lastIndex:
		s.mu.Unlock()
		return 0, raft.ErrUnavailable
	}
	if e := s.cachedLocked(i); e != nil {
		s.mu.Unlock()
		return e.GetTerm(), nil
	}
	s.mu.Unlock()
	e, err := s.readEntry(i)
	if err != nil {
		return 0, err
	}
	return e.GetTerm(), nil
}

// Entries implements raft.Storage.
func (s *LogStore) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	s.mu.Lock()
	if lo <= s.truncIndex {
		s.mu.Unlock()
		return nil, raft.ErrCompacted
	}
	if hi > s.lastIndex+1 {
		last := s.lastIndex
		s.mu.Unlock()
		panic(fmt.Sprintf("storage: entries hi %d beyond last index %d", hi, last))
	}
	if len(s.tail) > 0 && lo >= s.tail[0].GetIndex() {
		start := lo - s.tail[0].GetIndex()
		ents := limitSize(s.tail[start:start+(hi-lo)], maxSize)
		out := append([]*pb.Entry(nil), ents...)
		s.mu.Unlock()
		return out, nil
	}
	s.mu.Unlock()

	iter, err := s.db.NewIter(&pebble.IterOptions{LowerBound: LogKey(lo), UpperBound: LogKey(hi)})
	if err != nil {
		return nil, fmt.Errorf("storage: read entries [%d,%d): %w", lo, hi, err)
	}
	defer func() { _ = iter.Close() }()
	var ents []*pb.Entry
	var size uint64
	next := lo
	for valid := iter.First(); valid; valid = iter.Next() {
		e := &pb.Entry{}
		if err := proto.Unmarshal(iter.Value(), e); err != nil {
			return nil, fmt.Errorf("storage: decode entry at %x: %w: %v", iter.Key(), ErrCorrupt, err)
		}
		if e.GetIndex() != next {
			return nil, fmt.Errorf("storage: log has entry %d where %d belongs: %w", e.GetIndex(), next, ErrCorrupt)
		}
		size += uint64(proto.Size(e))
		if len(ents) > 0 && size > maxSize {
			break
		}
		ents = append(ents, e)
		next++
	}
	if err := iter.Error(); err != nil {
		return nil, fmt.Errorf("storage: read entries [%d,%d): %w", lo, hi, err)
	}
	if len(ents) == 0 || (next < hi && size <= maxSize) {
		return nil, fmt.Errorf("storage: log is missing entry %d of [%d,%d): %w", next, lo, hi, ErrCorrupt)
	}
	return ents, nil
}

// SetSnapshotter sets the function that makes the snapshots Snapshot returns.
// Call it before raft uses the store.
func (s *LogStore) SetSnapshotter(make func() (*pb.Snapshot, error)) { s.snapshot = make }

// Snapshot implements raft.Storage. Raft asks for one when a follower needs
// entries the log no longer has; the snapshotter describes the state machine
// as it is applied now. Without a snapshotter none is ever ready, which raft
// treats as "try later".
func (s *LogStore) Snapshot() (*pb.Snapshot, error) {
	if s.snapshot == nil {
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	return s.snapshot()
}

func (s *LogStore) cachedLocked(i uint64) *pb.Entry {
	if len(s.tail) == 0 || i < s.tail[0].GetIndex() || i > s.lastIndex {
		return nil
	}
	return s.tail[i-s.tail[0].GetIndex()]
}

func (s *LogStore) readEntry(i uint64) (*pb.Entry, error) {
	v, closer, err := s.db.Get(LogKey(i))
	if err != nil {
		return nil, fmt.Errorf("storage: read entry %d: %w", i, err)
	}
	defer closeQuietly(closer)
	e := &pb.Entry{}
	if err := proto.Unmarshal(v, e); err != nil {
		return nil, fmt.Errorf("storage: decode entry %d: %w: %v", i, ErrCorrupt, err)
	}
	if e.GetIndex() != i {
		return nil, fmt.Errorf("storage: log has entry %d where %d belongs: %w", e.GetIndex(), i, ErrCorrupt)
	}
	return e, nil
}

// Append stages hard state and new entries into b. Entries that overwrite a
// suffix of the log (a new leader's conflicting entries) replace it: indexes
// past the new last entry are deleted. Call AfterAppend once b is committed.
func (s *LogStore) Append(b *pebble.Batch, hs *pb.HardState, ents []*pb.Entry) error {
	if !raft.IsEmptyHardState(hs) {
		data, err := proto.Marshal(hs)
		if err != nil {
			return fmt.Errorf("storage: encode hard state: %w", err)
		}
		if err := b.Set(MetaKey(MetaHardState), data, nil); err != nil {
			return fmt.Errorf("storage: stage hard state: %w", err)
		}
	}
	if len(ents) == 0 {
		return nil
	}
	var buf []byte
	for _, e := range ents {
		var err error
		buf, err = proto.MarshalOptions{}.MarshalAppend(buf[:0], e)
		if err != nil {
			return fmt.Errorf("storage: encode entry %d: %w", e.GetIndex(), err)
		}
		if err := b.Set(LogKey(e.GetIndex()), buf, nil); err != nil {
			return fmt.Errorf("storage: stage entry %d: %w", e.GetIndex(), err)
		}
	}
	s.mu.Lock()
	last := s.lastIndex
	s.mu.Unlock()
	newLast := ents[len(ents)-1].GetIndex()
	if newLast < last {
		if err := b.DeleteRange(LogKey(newLast+1), LogKey(last+1), nil); err != nil {
			return fmt.Errorf("storage: stage removal of entries (%d,%d]: %w", newLast, last, err)
		}
	}
	return nil
}

// AfterAppend makes entries staged by Append visible to raft.
func (s *LogStore) AfterAppend(hs *pb.HardState, ents []*pb.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !raft.IsEmptyHardState(hs) {
		s.hardState = proto.CloneOf(hs)
	}
	if len(ents) == 0 {
		return
	}
	first := ents[0].GetIndex()
	if len(s.tail) > 0 {
		// The cached entries before first stay; a gap after the tail
		// empties it.
		tailFirst, kept := s.tail[0].GetIndex(), 0
		if first > tailFirst && first <= s.lastIndex+1 {
			kept = int(first - tailFirst)
		}
		if kept < len(s.tail) {
			// A follower's conflict (or a gap): rare, so counted again.
			clear(s.tail[kept:])
			s.tail = s.tail[:kept]
			s.tailBytes = dataBytes(s.tail)
		}
	}
	if len(s.tail) == 0 && first != s.lastIndex+1 && first > s.lastIndex {
		panic(fmt.Sprintf("storage: append at %d leaves a gap after last index %d", first, s.lastIndex))
	}
	s.tail = append(s.tail, ents...)
	s.tailBytes += dataBytes(ents)
	if n := len(s.tail); n > 2*tailCacheSize || s.tailBytes > 2*tailCacheBytes {
		// Keep the newest entries within both bounds, slid to the front
		// of the same array, so the cache costs no allocation in the
		// steady state.
		from, bytes := n-1, len(s.tail[n-1].GetData())
		for from > 0 && n-from < tailCacheSize && bytes+len(s.tail[from-1].GetData()) <= tailCacheBytes {
			from--
			bytes += len(s.tail[from].GetData())
		}
		kept := copy(s.tail, s.tail[from:])
		clear(s.tail[kept:n])
		s.tail, s.tailBytes = s.tail[:kept], bytes
	}
	s.lastIndex = ents[len(ents)-1].GetIndex()
}

func dataBytes(ents []*pb.Entry) int {
	n := 0
	for _, e := range ents {
		n += len(e.GetData())
	}
	return n
}

// GetConfState reads the configuration SaveConfState stored in r (empty when
// none was).
func GetConfState(r pebble.Reader) (*pb.ConfState, error) {
	cs := &pb.ConfState{}
	v, found, err := GetMeta(r, MetaConfState)
	if err != nil || !found {
		return cs, err
	}
	if err := proto.Unmarshal(v, cs); err != nil {
		return nil, fmt.Errorf("storage: decode conf state: %w: %v", ErrCorrupt, err)
	}
	return cs, nil
}

// SaveConfState stages the membership configuration into w.
func SaveConfState(w pebble.Writer, cs *pb.ConfState) error {
	data, err := proto.Marshal(cs)
	if err != nil {
		return fmt.Errorf("storage: encode conf state: %w", err)
	}
	if err := w.Set(MetaKey(MetaConfState), data, nil); err != nil {
		return fmt.Errorf("storage: stage conf state: %w", err)
	}
	return nil
}

// AfterConfState records a configuration whose batch was committed.
func (s *LogStore) AfterConfState(cs *pb.ConfState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.confState = proto.CloneOf(cs)
}

// Truncate stages the removal of every entry up to and including index into b.
// The caller must only truncate entries whose effects are durable: in plinth
// they are, once applied, because applied state and the log share one WAL and
// b is committed after the batch that applied them.
func (s *LogStore) Truncate(b *pebble.Batch, index uint64) (term uint64, err error) {
	s.mu.Lock()
	trunc, last := s.truncIndex, s.lastIndex
	s.mu.Unlock()
	if index <= trunc {
		return 0, nil
	}
	if index > last {
		return 0, fmt.Errorf("storage: truncate to %d beyond last index %d", index, last)
	}
	term, err = s.Term(index)
	if err != nil {
		return 0, fmt.Errorf("storage: truncate to %d: %w", index, err)
	}
	if err := b.Set(MetaKey(MetaLogTruncated), TruncationMark(index, term), nil); err != nil {
		return 0, fmt.Errorf("storage: stage truncation mark: %w", err)
	}
	if err := b.DeleteRange(LogKey(trunc+1), LogKey(index+1), nil); err != nil {
		return 0, fmt.Errorf("storage: stage truncation to %d: %w", index, err)
	}
	return term, nil
}

// AfterTruncate records a truncation whose batch was committed.
func (s *LogStore) AfterTruncate(index, term uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index <= s.truncIndex {
		return
	}
	s.truncIndex, s.truncTerm = index, term
	gone := 0
	for gone < len(s.tail) && s.tail[gone].GetIndex() <= index {
		s.tailBytes -= len(s.tail[gone].GetData())
		gone++
	}
	// Cleared, not only sliced past: the array would keep them otherwise.
	clear(s.tail[:gone])
	s.tail = s.tail[gone:]
}

func limitSize(ents []*pb.Entry, maxSize uint64) []*pb.Entry {
	if len(ents) == 0 {
		return ents
	}
	size := uint64(proto.Size(ents[0]))
	for i := 1; i < len(ents); i++ {
		size += uint64(proto.Size(ents[i]))
		if size > maxSize {
			return ents[:i]
		}
	}
	return ents
}
