package mvcc

import (
	"bytes"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/etcd/api/v3/mvccpb"
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

// scanLatest consumes and closes iter, an iterator over the latest space.
func scanLatest(iter *pebble.Iterator, sc *scan) error {
	var rec record
	for valid := iter.First(); valid; valid = iter.Next() {
		sc.count++
		if !sc.wantMore() {
			continue
		}
		v, err := iter.ValueAndErr()
		if err != nil {
			_ = iter.Close()
			return fmt.Errorf("mvcc: read value: %w", err)
		}
		if err := decodeRecord(v, &rec); err != nil {
			_ = iter.Close()
			return fmt.Errorf("mvcc: key %q: %w", iter.Key()[1:], err)
		}
		sc.kvs = append(sc.kvs, rec.keyValue(iter.Key()[1:], false))
	}
	if err := iter.Close(); err != nil {
		return fmt.Errorf("mvcc: scan latest: %w", err)
	}
	return nil
}

// readHistory scans sp as of rev from the history space of r: for each key,
// the newest version at or before rev, unless that version is a tombstone.
func readHistory(r pebble.Reader, sp span, rev int64, sc *scan) error {
	if sp.empty() {
		return nil
	}
	lower, upper := sp.historyBounds()
	iter, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return fmt.Errorf("mvcc: open iterator: %w", err)
	}
	return scanHistory(iter, rev, sc)
}

// scanHistory consumes and closes iter, an iterator over the history space.
func scanHistory(iter *pebble.Iterator, rev int64, sc *scan) (err error) {
	defer func() {
		if cerr := iter.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("mvcc: scan history: %w", cerr)
		}
	}()
	var rec record
	var prefix []byte
	valid := iter.First()
	for valid {
		k := iter.Key()
		n := historyUserPrefixLen(k)
		prefix = append(prefix[:0], k[:n]...)
		_, vrev, err := decodeHistoryKey(k)
		if err != nil {
			return err
		}
		if vrev > rev {
			// Versions sort newest first: jump to the newest one at or before rev.
			valid = iter.SeekGE(appendInvertedRev(prefix, rev))
			if !valid {
				break
			}
			k = iter.Key()
			if len(k) != len(prefix)+8 || !bytes.HasPrefix(k, prefix) {
				continue // no version of this key at or before rev; k is the next key
			}
		}
		v, err := iter.ValueAndErr()
		if err != nil {
			return fmt.Errorf("mvcc: read value: %w", err)
		}
		if err := decodeRecord(v, &rec); err != nil {
			return err
		}
		if !rec.tombstone {
			sc.count++
			if sc.wantMore() {
				key, _, err := decodeHistoryKey(k)
				if err != nil {
					return err
				}
				sc.kvs = append(sc.kvs, rec.keyValue(key, false))
			}
		}
		// Skip the rest of this key's versions.
		next := append(prefix[:len(prefix)-1:len(prefix)-1], afterTerminator)
		valid = iter.SeekGE(next)
	}
	return iter.Error()
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

// getLatest reads the newest live version of key; found is false if the key
// does not exist now.
func getLatest(r pebble.Reader, key []byte, rec *record) (found bool, err error) {
	v, closer, err := r.Get(latestKey(key))
	if err == pebble.ErrNotFound {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mvcc: get %q: %w", key, err)
	}
	defer func() { _ = closer.Close() }()
	if err := decodeRecord(v, rec); err != nil {
		return false, fmt.Errorf("mvcc: key %q: %w", key, err)
	}
	rec.value = append([]byte(nil), rec.value...)
	return true, nil
}
