package mvcc

import (
	"bytes"
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
	if sp.empty() {
		return nil
	}
	lower, upper := sp.latestBounds()
	iter, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("mvcc: open iterator: %w", err)
	}
	return scanLatest(iter, sc)
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

// walkHistory consumes and closes iter, an iterator over the history space,
// visiting for each key the newest version at or before rev unless that
// version is a tombstone: the state of the range as of rev. Keys come in
// ascending order, or descending when reverse is set.
func walkHistory(iter *pebble.Iterator, rev int64, reverse bool, visit visitFunc) (err error) {
	defer func() {
		if cerr := iter.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("mvcc: scan history: %w", cerr)
		}
	}()
	var prefix []byte
	valid := iter.First()
	if reverse {
		valid = iter.Last()
	}
	for valid {
		k := iter.Key()
		prefix = append(prefix[:0], k[:historyUserPrefixLen(k)]...)
		_, vrev, err := decodeHistoryKey(k)
		if err != nil {
			return err
		}
		found := true
		if vrev > rev || reverse {
			// Versions sort newest first: jump to the newest one at or
			// before rev (walking backwards, iter is on the oldest).
			found = iter.SeekGE(appendInvertedRev(prefix, rev))
			if found {
				k = iter.Key()
				found = len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix)
			}
		}
		if found {
			v, err := iter.ValueAndErr()
			if err != nil {
				return fmt.Errorf("mvcc: read value: %w", err)
			}
			if len(v) == 0 {
				return fmt.Errorf("mvcc: empty record at %x: %w", k, storage.ErrCorrupt)
			}
			if v[0]&flagTombstone == 0 {
				key, _, err := decodeHistoryKey(k)
				if err != nil {
					return err
				}
				more, err := visit(key, v)
				if err != nil || !more {
					return err
				}
			}
		}
		switch {
		case reverse:
			valid = iter.SeekLT(append([]byte(nil), prefix...))
		case found:
			// Skip the rest of this key's versions.
			valid = iter.SeekGE(append(prefix[:len(prefix)-1:len(prefix)-1], afterTerminator))
		default:
			// The seek above left iter on the next key already.
			valid = iter.Valid()
		}
	}
	return iter.Error()
}

// scanLatest consumes and closes iter, an iterator over the latest space.
func scanLatest(iter *pebble.Iterator, sc *scan) error {
	return walkLatest(iter, false, sc.visit)
}

// scanHistory consumes and closes iter, an iterator over the history space.
func scanHistory(iter *pebble.Iterator, rev int64, sc *scan) error {
	return walkHistory(iter, rev, false, sc.visit)
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
		m = keyMeta{exists: true, createRevision: rec.createRevision, version: rec.version}
	})
	return m, err
}
