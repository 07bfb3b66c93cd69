package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// The event index lists every change in revision order, for watch:
//
//	events: PrefixEvents + revision (8 bytes, big endian) + sub-revision (4 bytes, big endian)
//	        -> kind (1 byte) | uvarint key length | key [| record, for eventPutInline]
//
// History is keyed by key, then revision, which serves reads at a revision;
// a watcher catching up from revision r instead needs every change after r in
// revision order, whatever the size of the range it watches. The index is
// written in the same batch as the versions, so it is exactly as durable and
// as replicated (a Raft snapshot carries it, see storage.StateMachineSpans),
// and compaction drops its entries below the compaction revision with one
// range deletion.
//
// An entry names the key and what happened to it, not the value: a put's
// version is in history under the same revision, or, for a live first
// version, in the latest space (see keys.go), so writing the value twice on
// the put path would buy nothing. The one exception is a version that its own
// request deleted again (a delete to the end of the key space after a put in
// one transaction): its tombstone takes its revision in history, so the put's
// entry carries its record inline (eventPutInline).
//
// Sub-revisions number the changes of one request from 0 in the order they
// were made, which is the order etcd reports them in: a transaction's
// operations in order, a delete's keys in key order.
const (
	eventPut       byte = 0
	eventDelete    byte = 1
	eventPutInline byte = 2
)

const eventKeyLen = 1 + 8 + 4

func appendEventKey(dst []byte, rev int64, sub uint32) []byte {
	dst = append(dst, storage.PrefixEvents)
	dst = binary.BigEndian.AppendUint64(dst, uint64(rev))
	return binary.BigEndian.AppendUint32(dst, sub)
}

func eventKey(rev int64, sub uint32) []byte {
	return appendEventKey(make([]byte, 0, eventKeyLen), rev, sub)
}

func appendEventValue(dst []byte, kind byte, key []byte) []byte {
	dst = append(dst, kind)
	dst = binary.AppendUvarint(dst, uint64(len(key)))
	return append(dst, key...)
}

// decodeEvent splits an event index entry. key and inline alias k and v.
func decodeEvent(k, v []byte) (rev int64, kind byte, key, inline []byte, err error) {
	if len(k) != eventKeyLen || k[0] != storage.PrefixEvents || len(v) < 1 {
		return 0, 0, nil, nil, fmt.Errorf("mvcc: event %x: %w", k, storage.ErrCorrupt)
	}
	rev = int64(binary.BigEndian.Uint64(k[1:9]))
	kind = v[0]
	n, w := binary.Uvarint(v[1:])
	if w <= 0 || uint64(len(v)-1-w) < n || kind > eventPutInline {
		return 0, 0, nil, nil, fmt.Errorf("mvcc: event %x: %w", k, storage.ErrCorrupt)
	}
	key = v[1+w : 1+w+int(n)]
	return rev, kind, key, v[1+w+int(n):], nil
}

// logEvent stages the index entry of a change this request made to key.
func (t *txn) logEvent(kind byte, key []byte) error {
	t.keyBuf = appendEventKey(t.keyBuf[:0], t.begin+1, t.sub)
	t.buf = appendEventValue(t.buf[:0], kind, key)
	t.sub++
	if err := t.w.Set(t.keyBuf, t.buf, nil); err != nil {
		return fmt.Errorf("mvcc: stage event of %q: %w", key, err)
	}
	return nil
}

// inlinePut rewrites this request's put event of key to carry live, the
// version that a delete in the same request is about to replace with a
// tombstone at the same revision. (The API lets a request put a key only
// once; should it put one twice, every such event carries the last version.)
func (t *txn) inlinePut(key []byte, live *record) error {
	rev := t.begin + 1
	iter, err := t.r.NewIter(&pebble.IterOptions{LowerBound: eventKey(rev, 0), UpperBound: eventKey(rev+1, 0)})
	if err != nil {
		return fmt.Errorf("mvcc: open event iterator: %w", err)
	}
	defer func() { _ = iter.Close() }()
	found := false
	for valid := iter.First(); valid; valid = iter.Next() {
		v, err := iter.ValueAndErr()
		if err != nil {
			return fmt.Errorf("mvcc: read event: %w", err)
		}
		_, kind, k, _, err := decodeEvent(iter.Key(), v)
		if err != nil {
			return err
		}
		if kind != eventPut || !bytes.Equal(k, key) {
			continue
		}
		val := appendRecord(appendEventValue(nil, eventPutInline, key), live)
		if err := t.w.Set(append([]byte(nil), iter.Key()...), val, nil); err != nil {
			return fmt.Errorf("mvcc: stage event of %q: %w", key, err)
		}
		found = true
	}
	if err := iter.Error(); err != nil {
		return fmt.Errorf("mvcc: scan events: %w", err)
	}
	if found {
		return nil
	}
	return fmt.Errorf("mvcc: no put event of %q at revision %d: %w", key, rev, storage.ErrCorrupt)
}

// maxEventsScanned bounds the index entries one Events call reads, so that a
// watcher of a narrow range catching up over many other changes still gets
// its answer in bounded steps.
const maxEventsScanned = 16384

// Events reads the changes of revisions from, from+1, ... in revision order
// and, inside a revision, in the order the request made them. match, when
// not nil, picks the keys wanted; only their values are read. It stops at a
// revision boundary once it has collected limit events (limit <= 0: no
// limit) or scanned maxEventsScanned, or at the current revision, and
// returns next, the first revision it did not read: the from of the next
// call. A delete's event carries the key and its revision only, as etcd's.
// from below the compaction revision fails with ErrCompacted.
//
// Its cost follows the changes since from, not the number of keys in the
// watched range.
func (s *Store) Events(from int64, limit int, match func(key []byte) bool) (evs []*mvccpb.Event, next int64, err error) {
	return s.events(from, limit, match, false)
}

// FollowEvents is Events for the reader that HoldEvents protects (the watch
// hub): it may read below the compaction revision, as far back as
// compaction has not yet deleted, which HoldEvents keeps at or below the
// revisions the reader has yet to read. So a compaction that is applied
// before the hub has read the revisions it covers does not take them from
// watchers that are in sync, as in etcd, where they are handed their events
// as they are written.
func (s *Store) FollowEvents(from int64, limit int) (evs []*mvccpb.Event, next int64, err error) {
	return s.events(from, limit, nil, true)
}

// HoldEvents keeps compaction from deleting the events of revisions from
// rev on, and the versions they name, until a later call moves the hold
// forward; rev 0 releases it. The one reader that follows every change (the
// watch hub) moves it as it reads, so compaction waits for it only while it
// is behind.
func (s *Store) HoldEvents(rev int64) {
	s.eventsHold.Store(rev)
	s.viewMu.RLock()
	c := s.compactor
	s.viewMu.RUnlock()
	c.wakeUp()
}

func (s *Store) events(from int64, limit int, match func(key []byte) bool, held bool) (evs []*mvccpb.Event, next int64, err error) {
	s.viewMu.RLock()
	cur := s.rev
	floor := s.eventsFromLocked()
	if held {
		floor = s.heldEventsFromLocked()
	}
	if from < floor {
		s.viewMu.RUnlock()
		return nil, 0, ErrCompacted
	}
	if from > cur {
		s.viewMu.RUnlock()
		return nil, from, nil
	}
	snap := s.db.NewSnapshot()
	s.viewMu.RUnlock()
	defer func() { _ = snap.Close() }()

	iter, err := snap.NewIter(&pebble.IterOptions{LowerBound: eventKey(from, 0), UpperBound: eventKey(cur+1, 0)})
	if err != nil {
		return nil, 0, fmt.Errorf("mvcc: open event iterator: %w", err)
	}
	defer func() { _ = iter.Close() }()
	next = cur + 1
	scanned := 0
	var prevRev int64
	var rec record
	for valid := iter.First(); valid; valid = iter.Next() {
		v, err := iter.ValueAndErr()
		if err != nil {
			return nil, 0, fmt.Errorf("mvcc: read event: %w", err)
		}
		rev, kind, key, inline, err := decodeEvent(iter.Key(), v)
		if err != nil {
			return nil, 0, err
		}
		if rev != prevRev {
			if prevRev != 0 && ((limit > 0 && len(evs) >= limit) || scanned >= maxEventsScanned) {
				next = rev
				break
			}
			prevRev = rev
		}
		scanned++
		if match != nil && !match(key) {
			continue
		}
		switch kind {
		case eventDelete:
			evs = append(evs, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: append([]byte(nil), key...), ModRevision: rev}})
			continue
		case eventPutInline:
			if err := decodeRecord(inline, &rec); err != nil {
				return nil, 0, fmt.Errorf("mvcc: event of %q at %d: %w", key, rev, err)
			}
		default:
			kv, err := versionOf(snap, key, rev)
			if err != nil {
				return nil, 0, err
			}
			evs = append(evs, &mvccpb.Event{Type: mvccpb.PUT, Kv: kv})
			continue
		}
		evs = append(evs, &mvccpb.Event{Type: mvccpb.PUT, Kv: rec.keyValue(key, false)})
	}
	if err := iter.Error(); err != nil {
		return nil, 0, fmt.Errorf("mvcc: scan events from %d: %w", from, err)
	}
	return evs, next, nil
}

// EventsFrom returns the oldest revision Events can read from: the
// compaction revision, or, in a store written before the event index
// existed, the first revision it indexed.
func (s *Store) EventsFrom() int64 {
	s.viewMu.RLock()
	defer s.viewMu.RUnlock()
	return s.eventsFromLocked()
}

// heldEventsFromLocked is eventsFromLocked for FollowEvents: what the
// compactor has deleted, rather than what reads may see.
func (s *Store) heldEventsFromLocked() int64 { return s.indexedAfter(s.compactor.doneRev()) }

func (s *Store) eventsFromLocked() int64 { return s.indexedAfter(s.compactRev) }

// indexedAfter returns the oldest revision the event index can answer from,
// given that it holds nothing below compacted.
func (s *Store) indexedAfter(compacted int64) int64 {
	if s.indexedFrom > 2 {
		return max(compacted, s.indexedFrom)
	}
	return compacted
}

// loadIndexedFrom returns the first revision the event index holds, or the
// revision after rev if it holds none. Every revision after 1 has events,
// so an index that starts after 2 (and after the compaction revision) was
// begun on a store that already had history: reads before its start would
// silently miss changes, and fail as compacted instead.
func loadIndexedFrom(r pebble.Reader, rev int64) (int64, error) {
	iter, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixEvents}, UpperBound: []byte{storage.PrefixEvents + 1}})
	if err != nil {
		return 0, fmt.Errorf("mvcc: open event iterator: %w", err)
	}
	defer func() { _ = iter.Close() }()
	if !iter.First() {
		if err := iter.Error(); err != nil {
			return 0, fmt.Errorf("mvcc: scan events: %w", err)
		}
		return rev + 1, nil
	}
	k := iter.Key()
	if len(k) != eventKeyLen {
		return 0, fmt.Errorf("mvcc: event key %x: %w", k, storage.ErrCorrupt)
	}
	return int64(binary.BigEndian.Uint64(k[1:9])), nil
}

// versionOf returns the version of key that a put at rev wrote: in history,
// or in the latest space if it is a live first version.
func versionOf(r pebble.Reader, key []byte, rev int64) (*mvccpb.KeyValue, error) {
	v, closer, err := r.Get(historyKey(key, rev))
	if errors.Is(err, pebble.ErrNotFound) {
		v, closer, err = r.Get(latestKey(key))
	}
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("mvcc: version of %q at %d is missing: %w", key, rev, storage.ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("mvcc: get %q at %d: %w", key, rev, err)
	}
	defer func() { _ = closer.Close() }()
	var rec record
	if err := decodeRecord(v, &rec); err != nil {
		return nil, fmt.Errorf("mvcc: key %q: %w", key, err)
	}
	if rec.tombstone || rec.modRevision != rev {
		return nil, fmt.Errorf("mvcc: version of %q at %d is missing (found revision %d): %w", key, rev, rec.modRevision, storage.ErrCorrupt)
	}
	return rec.keyValue(key, false), nil
}
