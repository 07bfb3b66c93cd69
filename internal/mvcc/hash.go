package mvcc

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/cockroachdb/pebble/v2"

	"github.com/plinthdb/plinth/internal/storage"
)

// KVHash is the hash of the store's logical content at one revision: the
// answer to Maintenance.HashKV.
type KVHash struct {
	Hash uint32
	// Revision is the revision hashed.
	Revision int64
	// CompactRevision is the store's compaction revision when it hashed
	// (-1 before any compaction).
	CompactRevision int64
	// Keys counts the keys live at Revision, met on the same walk.
	Keys int64
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// HashKV hashes the versions that a compaction at the store's compaction
// revision C leaves readable at or below rev (0: the current revision): for
// each key, every version after C up to rev (tombstones included), and its
// newest version at or before C unless that is a tombstone. Keys are hashed
// in order, each key's versions oldest first.
//
// That is the logical history, not the bytes on disk: two members that
// applied the same entries hash alike at the same revision however far their
// background compaction got, which is what a corruption check needs. It
// reads one consistent snapshot and walks the whole store, as etcd's does.
func (s *Store) HashKV(rev int64) (KVHash, error) {
	s.viewMu.RLock()
	cur, compacted := s.rev, s.compactRev
	snap := s.db.NewSnapshot()
	s.viewMu.RUnlock()
	defer func() { _ = snap.Close() }()

	switch {
	case rev == 0:
		rev = cur
	case rev > cur:
		return KVHash{}, ErrFutureRev
	case rev < compacted:
		return KVHash{}, ErrCompacted
	}
	return hashAt(snap, rev, compacted)
}

// HashOf hashes the store that r, a consistent view of a database (a Pebble
// snapshot), holds, at its current revision: what HashKV(0) answered on the
// store when the view was taken. Backups record it.
func HashOf(r pebble.Reader) (KVHash, error) {
	revs, err := loadRevisions(r)
	if err != nil {
		return KVHash{}, err
	}
	return hashAt(r, revs.rev, revs.compactRev)
}

func hashAt(r pebble.Reader, rev, compacted int64) (KVHash, error) {
	h := crc32.New(castagnoli)
	var buf []byte
	var keys int64
	err := walkVersions(r, func(key []byte, newestFirst []record) {
		// The versions to hash are a run of newestFirst: skip those
		// after rev, take those after the compaction, then the newest at
		// or before it if it is no tombstone.
		i := 0
		for i < len(newestFirst) && newestFirst[i].modRevision > rev {
			i++
		}
		if i < len(newestFirst) && !newestFirst[i].tombstone {
			keys++
		}
		j := i
		for j < len(newestFirst) && newestFirst[j].modRevision > compacted {
			j++
		}
		if j < len(newestFirst) && !newestFirst[j].tombstone {
			j++
		}
		if i == j {
			return
		}
		buf = binary.AppendUvarint(buf[:0], uint64(len(key)))
		buf = append(buf, key...)
		for k := j - 1; k >= i; k-- {
			buf = binary.AppendUvarint(buf, uint64(len(newestFirst[k].value)))
			buf = appendRecord(buf, &newestFirst[k])
		}
		h.Write(buf)
	})
	if err != nil {
		return KVHash{}, fmt.Errorf("mvcc: hash at revision %d: %w", rev, err)
	}
	return KVHash{Hash: h.Sum32(), Revision: rev, CompactRevision: compacted, Keys: keys}, nil
}

// walkVersions calls visit for every key that has a version in r, in key
// order, with all its stored versions newest first. The key and records are
// valid only during the call.
//
// A key's versions are its history entries, and its live version when that is
// a first version, which lives in the latest space alone (see keys.go).
func walkVersions(r pebble.Reader, visit func(key []byte, newestFirst []record)) (err error) {
	latest, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixLatest}, UpperBound: []byte{storage.PrefixLatest + 1}})
	if err != nil {
		return err
	}
	defer closeInto(latest, &err)
	history, err := r.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixHistory}, UpperBound: []byte{storage.PrefixHistory + 1}})
	if err != nil {
		return err
	}
	defer closeInto(history, &err)

	var versions []record
	latestOK, historyOK := latest.First(), history.First()
	for latestOK || historyOK {
		versions = versions[:0]
		var key []byte
		if historyOK {
			if key, _, err = decodeHistoryKey(history.Key()); err != nil {
				return err
			}
		}
		// A latest key before the history's next key has no history: a
		// live first version.
		if latestOK && (!historyOK || bytes.Compare(latest.Key()[1:], key) < 0) {
			var rec record
			if err := decodeLatest(latest, &rec); err != nil {
				return err
			}
			visit(latest.Key()[1:], append(versions, rec))
			latestOK = latest.Next()
			continue
		}
		prefixLen := historyUserPrefixLen(history.Key())
		prefix := append([]byte(nil), history.Key()[:prefixLen]...)
		for historyOK && len(history.Key()) == prefixLen+8 && bytes.HasPrefix(history.Key(), prefix) {
			v, err := history.ValueAndErr()
			if err != nil {
				return err
			}
			var rec record
			if err := decodeRecord(v, &rec); err != nil {
				return err
			}
			rec.value = append([]byte(nil), rec.value...)
			versions = append(versions, rec)
			historyOK = history.Next()
		}
		if latestOK && bytes.Equal(latest.Key()[1:], key) {
			var rec record
			if err := decodeLatest(latest, &rec); err != nil {
				return err
			}
			if len(versions) == 0 || rec.modRevision > versions[0].modRevision {
				versions = append([]record{rec}, versions...)
			}
			latestOK = latest.Next()
		}
		visit(key, versions)
	}
	if err := latest.Error(); err != nil {
		return err
	}
	return history.Error()
}

// decodeLatest decodes the latest-space record under iter, copying its value.
func decodeLatest(iter *pebble.Iterator, rec *record) error {
	v, err := iter.ValueAndErr()
	if err != nil {
		return err
	}
	if err := decodeRecord(v, rec); err != nil {
		return err
	}
	rec.value = append([]byte(nil), rec.value...)
	return nil
}

// closeInto closes iter, keeping its error in *err unless *err holds one.
func closeInto(iter *pebble.Iterator, err *error) {
	if cerr := iter.Close(); cerr != nil && *err == nil {
		*err = cerr
	}
}
