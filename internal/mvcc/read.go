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

// span is a user key range in etcd's conventions, already normalised:
// a single key (end == nil), every key from key on (fromKey), or [key, end).
type span struct {
	key     []byte
	end     []byte
	fromKey bool
}

// newSpan interprets a request's key and range_end: an empty range_end is the
// single key, "\x00" is "every key >= key", anything else is [key, range_end).
func newSpan(key, rangeEnd []byte) span {
	switch {
	case len(rangeEnd) == 0:
		return span{key: key}
	case len(rangeEnd) == 1 && rangeEnd[0] == 0:
		return span{key: key, fromKey: true}
	default:
		return span{key: key, end: rangeEnd}
	}
}

// oneKey reports whether the span is the single key s.key.
func (s span) oneKey() bool { return s.end == nil && !s.fromKey }

// empty reports whether the span cannot hold any key ([key, end) with end <= key).
func (s span) empty() bool {
	return s.end != nil && bytes.Compare(s.end, s.key) <= 0
}

func (s span) latestBounds() (lower, upper []byte) {
	switch {
	case s.fromKey:
		return latestBounds(s.key, []byte{})
	case s.end == nil:
		lower = latestKey(s.key)
		return lower, append(append([]byte(nil), lower...), 0)
	default:
		return latestBounds(s.key, s.end)
	}
}

func (s span) historyBounds() (lower, upper []byte) {
	switch {
	case s.fromKey:
		return historyBounds(s.key, []byte{})
	case s.end == nil:
		return historyBounds(s.key, nil)
	default:
		return historyBounds(s.key, s.end)
	}
}

// scan collects what a range read at one revision finds.
type scan struct {
	limit     int  // keys to collect; 0 = all
	countOnly bool // count only, collect nothing
	kvs       []*mvccpb.KeyValue
	count     int
}

func (sc *scan) wantMore() bool {
	return !sc.countOnly && (sc.limit == 0 || len(sc.kvs) < sc.limit)
}

// readLatest scans the newest versions in sp from r.
func readLatest(r pebble.Reader, sp span, sc *scan) error {
	return visitLatestSpan(r, sp, sc.visit)
}

// visitLatestSpan visits the live keys of sp in ascending order: a single
// key with a point lookup, which Pebble's bloom filters answer for most
// tables, and a range with an iterator.
func visitLatestSpan(r pebble.Reader, sp span, visit visitFunc) error {
	if sp.empty() {
		return nil
	}
	if sp.oneKey() {
		v, closer, err := r.Get(latestKey(sp.key))
		if errors.Is(err, pebble.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("mvcc: get %q: %w", sp.key, err)
		}
		defer func() { _ = closer.Close() }()
		_, err = visit(sp.key, v)
		return err
	}
	lower, upper := sp.latestBounds()
	iter, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("mvcc: open iterator: %w", err)
	}
	return walkLatest(iter, false, visit)
}

// visitFunc is called for each live version a walk meets, in walk order: key
// is the user key, v the stored record. Both alias iterator memory and are
// valid only during the call. Returning false stops the walk.
type visitFunc func(key, v []byte) (more bool, err error)

// walkLatest consumes and closes iter, an iterator over the latest space,
// visiting its keys in ascending order, or descending when reverse is set.
func walkLatest(iter *pebble.Iterator, reverse bool, visit visitFunc) (err error) {
	defer func() {
		if cerr := iter.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("mvcc: scan latest: %w", cerr)
		}
	}()
	valid := iter.First()
	if reverse {
		valid = iter.Last()
	}
	for valid {
		v, err := iter.ValueAndErr()
		if err != nil {
			return fmt.Errorf("mvcc: read value: %w", err)
		}
		more, err := visit(iter.Key()[1:], v)
		if err != nil || !more {
			return err
		}
		if reverse {
			valid = iter.Prev()
		} else {
			valid = iter.Next()
		}
	}
	return iter.Error()
}

// walkAt consumes and closes latest and history, iterators over one span in
// the latest and in the history space, visiting for each key its newest
// version at or before rev unless that version is a tombstone: the state of
// the span as of rev. A key's live version is in the latest space (and in
// history too unless it is a first version), and is its newest: a key whose
// live version is at or before rev is read from latest, any other from
// history, where its versions at or before rev all are. Keys come in
// ascending order, or descending when reverse is set.
func walkAt(latest, history *pebble.Iterator, rev int64, reverse bool, visit visitFunc) (err error) {
	defer func() {
		for _, iter := range [...]*pebble.Iterator{latest, history} {
			if cerr := iter.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("mvcc: scan at revision %d: %w", rev, cerr)
			}
		}
	}()
	latestValid, historyValid := latest.First(), history.First()
	if reverse {
		latestValid, historyValid = latest.Last(), history.Last()
	}
	var prefix, historyUserKey []byte
	var rec record
	historyMoved := true // the history cursor is on a key not decoded yet
	for latestValid || historyValid {
		if historyValid && historyMoved {
			historyMoved = false
			k := history.Key()
			prefix = append(prefix[:0], k[:historyUserPrefixLen(k)]...)
			if historyUserKey, _, err = decodeHistoryKey(k); err != nil {
				return err
			}
		}
		// Which cursor holds the next key in walk order: latest (< 0),
		// history (> 0), or both (0).
		next := 0
		switch {
		case !historyValid:
			next = -1
		case !latestValid:
			next = 1
		default:
			next = bytes.Compare(latest.Key()[1:], historyUserKey)
			if reverse {
				next = -next
			}
		}
		visited := false
		if next <= 0 {
			v, err := latest.ValueAndErr()
			if err != nil {
				return fmt.Errorf("mvcc: read value: %w", err)
			}
			if err := decodeRecord(v, &rec); err != nil {
				return fmt.Errorf("mvcc: key %q: %w", latest.Key()[1:], err)
			}
			if rec.modRevision <= rev {
				more, err := visit(latest.Key()[1:], v)
				if err != nil || !more {
					return err
				}
				visited = true
			}
			if reverse {
				latestValid = latest.Prev()
			} else {
				latestValid = latest.Next()
			}
		}
		if next >= 0 {
			if !visited {
				v, found, err := versionAt(history, prefix, rev, !reverse)
				if err != nil {
					return err
				}
				if found && v[0]&flagTombstone == 0 {
					more, err := visit(historyUserKey, v)
					if err != nil || !more {
						return err
					}
				}
			}
			if reverse {
				historyValid = history.SeekLT(append([]byte(nil), prefix...))
			} else {
				// Past the rest of this key's versions.
				historyValid = history.SeekGE(append(prefix[:len(prefix)-1:len(prefix)-1], afterTerminator))
			}
			historyMoved = true
		}
	}
	if err := latest.Error(); err != nil {
		return fmt.Errorf("mvcc: scan at revision %d: %w", rev, err)
	}
	return history.Error()
}

// versionAt returns the record of the newest version at or before rev of the
// key whose history prefix is prefix, found false if it has none. iter is on
// one of the key's versions; onNewest says it is on the newest, which saves a
// seek when that one is old enough. iter may be moved anywhere.
func versionAt(iter *pebble.Iterator, prefix []byte, rev int64, onNewest bool) (v []byte, found bool, err error) {
	k := iter.Key()
	if !onNewest || int64(^binary.BigEndian.Uint64(k[len(k)-8:])) > rev {
		// Versions sort newest first: jump to the newest one at or
		// before rev.
		if !iter.SeekGE(appendInvertedRev(prefix, rev)) {
			return nil, false, iter.Error()
		}
		k = iter.Key()
		if len(k) != len(prefix)+8 || !bytes.HasPrefix(k, prefix) {
			return nil, false, nil
		}
	}
	v, err = iter.ValueAndErr()
	if err != nil {
		return nil, false, fmt.Errorf("mvcc: read value: %w", err)
	}
	if len(v) == 0 {
		return nil, false, fmt.Errorf("mvcc: empty record at %x: %w", k, storage.ErrCorrupt)
	}
	return v, true, nil
}

func (sc *scan) visit(key, v []byte) (bool, error) {
	sc.count++
	if !sc.wantMore() {
		return true, nil
	}
	var rec record
	if err := decodeRecord(v, &rec); err != nil {
		return false, fmt.Errorf("mvcc: key %q: %w", key, err)
	}
	sc.kvs = append(sc.kvs, rec.keyValue(key, false))
	return true, nil
}

func appendInvertedRev(prefix []byte, rev int64) []byte {
	out := make([]byte, len(prefix), len(prefix)+8)
	copy(out, prefix)
	var b [8]byte
	u := ^uint64(rev)
	for i := 7; i >= 0; i-- {
		b[i] = byte(u)
		u >>= 8
	}
	return append(out, b[:]...)
}

// withLatest calls fn with the record of key's newest live version, which is
// valid only during the call; found is false if the key does not exist now.
func withLatest(r pebble.Reader, key []byte, fn func(rec *record)) (found bool, err error) {
	v, closer, err := r.Get(latestKey(key))
	if err == pebble.ErrNotFound {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mvcc: get %q: %w", key, err)
	}
	defer func() { _ = closer.Close() }()
	var rec record
	if err := decodeRecord(v, &rec); err != nil {
		return false, fmt.Errorf("mvcc: key %q: %w", key, err)
	}
	fn(&rec)
	return true, nil
}

// getLatest returns key's newest live version, nil if the key does not exist
// now.
func getLatest(r pebble.Reader, key []byte) (*mvccpb.KeyValue, error) {
	var kv *mvccpb.KeyValue
	_, err := withLatest(r, key, func(rec *record) { kv = rec.keyValue(key, false) })
	return kv, err
}

// lookupLatest returns what a put needs of key's newest version, without
// copying its value.
func lookupLatest(r pebble.Reader, key []byte) (keyMeta, error) {
	var m keyMeta
	_, err := withLatest(r, key, func(rec *record) {
		m = keyMeta{exists: true, createRevision: rec.createRevision, version: rec.version, lease: rec.lease}
	})
	return m, err
}
