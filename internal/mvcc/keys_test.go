package mvcc

import (
	"bytes"
	"errors"
	"math"
	"testing"

	"github.com/plinthdb/plinth/internal/storage"
)

// sign returns -1, 0 or 1.
func sign(c int) int {
	switch {
	case c < 0:
		return -1
	case c > 0:
		return 1
	}
	return 0
}

// inHistoryBounds reports whether k lies in the Pebble bounds [lower, upper).
func inHistoryBounds(k, lower, upper []byte) bool {
	return bytes.Compare(lower, k) <= 0 && bytes.Compare(k, upper) < 0
}

// FuzzHistoryKey checks the history key encoding: it round-trips, it orders
// user keys as bytes.Compare does and a key's versions newest first, its
// bounds select exactly the user keys of a range, and decoding arbitrary
// bytes never panics.
func FuzzHistoryKey(f *testing.F) {
	seeds := [][]byte{
		nil, {}, {0}, {0, 0}, {0, 1}, {0, 2}, {0, 0xff}, {0xff}, {0xff, 0xff}, {1},
		[]byte("a"), []byte("a\x00"), []byte("a\x00\x01"), []byte("a\x00\xff"), []byte("a\x01"),
		[]byte("a\xff"), []byte("ab"), []byte("b"), []byte("foo/bar"), []byte("\x00\x01\x02"),
	}
	revs := []int64{0, 1, 2, 255, 256, 1 << 40, math.MaxInt64, -1, math.MinInt64}
	for i, a := range seeds {
		b := seeds[(i+1)%len(seeds)]
		e := seeds[(i+5)%len(seeds)]
		f.Add(a, b, e, revs[i%len(revs)], revs[(i+3)%len(revs)], historyKey(a, revs[i%len(revs)]))
	}
	// Raw inputs for the decoder: truncated, bad escapes, junk after the terminator.
	f.Add([]byte("a"), []byte("a"), []byte(nil), int64(5), int64(5), []byte{storage.PrefixHistory, 'a', 0, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte("a"), []byte("a"), []byte(nil), int64(5), int64(5), []byte{storage.PrefixHistory, 'a', 0, 7, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte("a"), []byte("a"), []byte(nil), int64(5), int64(5), []byte{storage.PrefixHistory, 'a', 0, 1, 'x', 0, 1, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte("a"), []byte("a"), []byte(nil), int64(5), int64(5), []byte{storage.PrefixHistory, 'a', 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte("a"), []byte("a"), []byte(nil), int64(5), int64(5), []byte{storage.PrefixLatest, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0})

	f.Fuzz(func(t *testing.T, a, b, end []byte, r1, r2 int64, raw []byte) {
		// Round trip, for every revision.
		ka := historyKey(a, r1)
		key, rev, err := decodeHistoryKey(ka)
		if err != nil {
			t.Fatalf("decodeHistoryKey(historyKey(%q, %d)): %v", a, r1, err)
		}
		if !bytes.Equal(key, a) || rev != r1 {
			t.Fatalf("decodeHistoryKey(historyKey(%q, %d)) = %q, %d", a, r1, key, rev)
		}
		if !bytes.HasPrefix(ka, historyPrefix(a)) || len(ka) != len(historyPrefix(a))+8 {
			t.Fatalf("historyKey(%q, %d) = %x does not extend historyPrefix %x", a, r1, ka, historyPrefix(a))
		}
		if historyUserPrefixLen(ka) != len(historyPrefix(a)) {
			t.Fatalf("historyUserPrefixLen(%x) = %d, want %d", ka, historyUserPrefixLen(ka), len(historyPrefix(a)))
		}

		// Ordering. Revisions are never negative in a store.
		n1, n2 := r1&math.MaxInt64, r2&math.MaxInt64
		ka, kb := historyKey(a, n1), historyKey(b, n2)
		if c := bytes.Compare(a, b); c != 0 {
			if got := sign(bytes.Compare(ka, kb)); got != c {
				t.Fatalf("user keys %q vs %q compare %d, history keys (revs %d, %d) compare %d", a, b, c, n1, n2, got)
			}
			next := nextHistoryKey(a)
			if c < 0 && bytes.Compare(next, kb) > 0 {
				t.Fatalf("nextHistoryKey(%q) = %x sorts after a version of the greater key %q: %x", a, next, b, kb)
			}
		} else {
			want := -sign(compareInt(n1, n2)) // newer first
			if got := sign(bytes.Compare(ka, kb)); got != want {
				t.Fatalf("key %q revs %d vs %d: history keys compare %d, want %d", a, n1, n2, got, want)
			}
		}
		if next := nextHistoryKey(a); bytes.Compare(ka, next) >= 0 || bytes.Compare(historyKey(a, 0), next) >= 0 {
			t.Fatalf("nextHistoryKey(%q) = %x does not sort after its versions", a, next)
		}
		if bytes.Compare(historyPrefix(a), historyKey(a, math.MaxInt64)) > 0 {
			t.Fatalf("historyPrefix(%q) sorts after the key's newest possible version", a)
		}

		// Bounds: [b, end), the single key b, and every key from b on.
		if len(end) > 0 {
			lower, upper := historyBounds(b, end)
			want := bytes.Compare(b, a) <= 0 && bytes.Compare(a, end) < 0
			if got := inHistoryBounds(ka, lower, upper); got != want {
				t.Fatalf("historyBounds(%q, %q) holds version %d of %q: %v, want %v", b, end, n1, a, got, want)
			}
		}
		lower, upper := historyBounds(b, nil)
		if got, want := inHistoryBounds(ka, lower, upper), bytes.Equal(a, b); got != want {
			t.Fatalf("historyBounds(%q, nil) holds version %d of %q: %v, want %v", b, n1, a, got, want)
		}
		lower, upper = historyBounds(b, []byte{})
		if got, want := inHistoryBounds(ka, lower, upper), bytes.Compare(b, a) <= 0; got != want {
			t.Fatalf("historyBounds(%q, from key) holds version %d of %q: %v, want %v", b, n1, a, got, want)
		}

		// Arbitrary bytes: no panic, errors are corruption, success is canonical.
		for _, in := range [][]byte{raw, a, append([]byte{storage.PrefixHistory}, raw...)} {
			k, r, err := decodeHistoryKey(in)
			if err != nil {
				if !errors.Is(err, storage.ErrCorrupt) {
					t.Fatalf("decodeHistoryKey(%x) error %v does not wrap storage.ErrCorrupt", in, err)
				}
				continue
			}
			if again := historyKey(k, r); !bytes.Equal(again, in) {
				t.Fatalf("decodeHistoryKey(%x) = %q, %d which encodes as %x", in, k, r, again)
			}
		}
	})
}

// TestHistoryKeyOrderExamples spells out the orderings the escaping exists for.
func TestHistoryKeyOrderExamples(t *testing.T) {
	ordered := []string{"", "\x00", "\x00\x00", "\x00\x01", "\x00\xff", "\x01", "a", "a\x00", "a\x00\x00", "a\x00\x01", "a\x01", "ab", "a\xff", "a\xff\x00", "b", "\xff", "\xff\x00", "\xff\xff"}
	for i := 0; i+1 < len(ordered); i++ {
		lo, hi := []byte(ordered[i]), []byte(ordered[i+1])
		if bytes.Compare(historyKey(lo, 1), historyKey(hi, math.MaxInt64)) >= 0 {
			t.Errorf("versions of %q do not sort before those of %q", lo, hi)
		}
		if bytes.Compare(nextHistoryKey(lo), historyKey(hi, math.MaxInt64)) > 0 {
			t.Errorf("nextHistoryKey(%q) sorts after the versions of %q", lo, hi)
		}
		if bytes.Compare(latestKey(lo), latestKey(hi)) >= 0 {
			t.Errorf("latestKey(%q) does not sort before latestKey(%q)", lo, hi)
		}
	}
	for _, k := range ordered {
		if bytes.Compare(historyKey([]byte(k), 10), historyKey([]byte(k), 9)) >= 0 {
			t.Errorf("%q: revision 10 does not sort before revision 9", k)
		}
	}
}
