package mvcc

import (
	"encoding/binary"
	"fmt"

	"github.com/plinthdb/plinth/internal/storage"
)

// Two key spaces hold the data:
//
//	latest:  PrefixLatest  + user key                          -> the live version (the newest, if not deleted)
//	history: PrefixHistory + escaped(user key) + 0x00 0x01 + ^revision (8 bytes, big endian)
//	                                                            -> a version, or a tombstone
//
// The latest space answers reads at the current revision with one ordered scan
// and no version skipping, which is what nearly every read asks for. History
// holds every version except a live first version (version 1): a create
// writes the latest space only, and its version is copied into history when a
// put or delete supersedes it. A later version is written to both spaces at
// once, so that superseding it needs no read of it. Reads at a past revision
// merge the two spaces: a key whose live version is at or before the revision
// reads it from latest; otherwise the inverted revision sorts its versions in
// history newest first, so one SeekGE(historyKey(k, rev)) lands on the newest
// version at or before rev.
//
// User keys may contain any byte, so in history keys they are escaped to keep
// the order of user keys and to make the terminator unambiguous: 0x00 is
// written as 0x00 0xFF, and the key ends with 0x00 0x01. For user keys a < b,
// escaped(a)+terminator < escaped(b)+terminator, and for any end key e,
// escaped(e) (without terminator) is an exclusive upper bound for exactly the
// keys below e.
const (
	escapeByte     = 0x00
	escapedZero    = 0xFF
	terminatorByte = 0x01
	// afterTerminator sorts after every version of a key and before the
	// versions of the next key: it is the "next user key" seek target.
	afterTerminator = 0x02
)

func latestKey(key []byte) []byte {
	return appendLatestKey(make([]byte, 0, 1+len(key)), key)
}

func appendLatestKey(dst, key []byte) []byte {
	dst = append(dst, storage.PrefixLatest)
	return append(dst, key...)
}

// latestBounds returns Pebble bounds of the latest space for the user range
// [key, end). end nil means the single key; empty end means no upper bound.
func latestBounds(key, end []byte) (lower, upper []byte) {
	lower = latestKey(key)
	if len(end) == 0 {
		return lower, []byte{storage.PrefixLatest + 1}
	}
	return lower, latestKey(end)
}

func appendEscaped(dst, key []byte) []byte {
	for _, c := range key {
		if c == escapeByte {
			dst = append(dst, escapeByte, escapedZero)
			continue
		}
		dst = append(dst, c)
	}
	return dst
}

// historyPrefix returns the prefix shared by every version of key.
func historyPrefix(key []byte) []byte {
	return appendHistoryPrefix(make([]byte, 0, 1+len(key)+2+8), key)
}

func appendHistoryPrefix(dst, key []byte) []byte {
	dst = append(dst, storage.PrefixHistory)
	dst = appendEscaped(dst, key)
	return append(dst, escapeByte, terminatorByte)
}

// historyKey returns the history key of key's version at rev.
func historyKey(key []byte, rev int64) []byte {
	return appendHistoryKey(make([]byte, 0, 1+len(key)+2+8), key, rev)
}

func appendHistoryKey(dst, key []byte, rev int64) []byte {
	return binary.BigEndian.AppendUint64(appendHistoryPrefix(dst, key), ^uint64(rev))
}

// nextHistoryKey returns the smallest history key after every version of key.
func nextHistoryKey(key []byte) []byte {
	k := make([]byte, 0, 1+len(key)+2)
	k = append(k, storage.PrefixHistory)
	k = appendEscaped(k, key)
	return append(k, escapeByte, afterTerminator)
}

// historyBounds returns Pebble bounds of the history space for [key, end),
// with the same conventions as latestBounds.
func historyBounds(key, end []byte) (lower, upper []byte) {
	lower = historyPrefix(key)
	switch {
	case end == nil:
		return lower, nextHistoryKey(key)
	case len(end) == 0:
		return lower, []byte{storage.PrefixHistory + 1}
	}
	upper = append([]byte{storage.PrefixHistory}, appendEscaped(nil, end)...)
	return lower, upper
}

// decodeHistoryKey splits a history key into its user key and revision.
func decodeHistoryKey(k []byte) (key []byte, rev int64, err error) {
	if len(k) < 1+2+8 || k[0] != storage.PrefixHistory {
		return nil, 0, fmt.Errorf("mvcc: history key %x: %w", k, storage.ErrCorrupt)
	}
	body := k[1 : len(k)-8]
	key = make([]byte, 0, len(body))
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c != escapeByte {
			key = append(key, c)
			continue
		}
		if i+1 >= len(body) {
			return nil, 0, fmt.Errorf("mvcc: history key %x ends inside an escape: %w", k, storage.ErrCorrupt)
		}
		switch body[i+1] {
		case escapedZero:
			key = append(key, 0)
			i++
		case terminatorByte:
			if i+2 != len(body) {
				return nil, 0, fmt.Errorf("mvcc: history key %x has bytes after its terminator: %w", k, storage.ErrCorrupt)
			}
			return key, int64(^binary.BigEndian.Uint64(k[len(k)-8:])), nil
		default:
			return nil, 0, fmt.Errorf("mvcc: history key %x has escape 0x00 0x%02x: %w", k, body[i+1], storage.ErrCorrupt)
		}
	}
	return nil, 0, fmt.Errorf("mvcc: history key %x has no terminator: %w", k, storage.ErrCorrupt)
}

// historyUserPrefixLen returns the length of the part of history key k that
// identifies its user key (everything but the revision).
func historyUserPrefixLen(k []byte) int { return len(k) - 8 }
