package mvcc

import (
	"fmt"
	"hash/maphash"
	"log/slog"
	"runtime"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/plinthdb/plinth/internal/storage"
)

// keyFilter is a Bloom filter over every key the latest space may hold: a put
// of a key the filter has never seen is a create, and needs no Pebble lookup
// to learn that. A false "maybe" only costs that lookup; a false "no" would
// corrupt the key's create revision and version, so the filter is built to
// never give one:
//
//   - the write path adds every key it puts, from the moment the store opens;
//   - a background scan adds the keys that were there before, reading an
//     iterator it opens after the write path started adding;
//   - until that scan has finished, the filter answers "maybe" for every key.
//
// Deletes never remove a key (a Bloom filter cannot), which only makes
// answers "maybe". Bits are set and read atomically, because the scan and the
// write path add at the same time.
type keyFilter struct {
	seed   maphash.Seed
	words  []atomic.Uint64 // blocks of blockWords words
	blocks uint64
	ready  atomic.Bool
}

// The filter is sized for keyFilterKeys keys at 10 bits a key; beyond that it
// still answers correctly, with more lookups. It is blocked: all of a key's
// probes fall in one 512-bit block, so an add or a lookup touches one cache
// line where a classic Bloom filter of this size (5 MiB, far beyond the CPU
// caches) takes a cache miss per probe. That costs a little accuracy: about
// 1% false "maybe" at capacity, against 0.8%.
const (
	keyFilterKeys   = 4 << 20
	keyFilterProbes = 7
	blockWords      = 8 // 64 bytes: a cache line
	blockBits       = blockWords * 64
)

func newKeyFilter(keys int) *keyFilter {
	blocks := (keys*10 + blockBits - 1) / blockBits
	f := &keyFilter{seed: maphash.MakeSeed(), blocks: uint64(blocks)}
	// Outside the Go heap where the platform allows (see filterWords):
	// page-aligned either way, so each block is one cache line.
	f.words = filterWords(f, blocks*blockWords)
	return f
}

// probes calls visit with the word and bit of each of key's probes, until
// visit returns false. The high half of the hash picks the block, the low
// half the bits within it.
func (f *keyFilter) probes(key []byte, visit func(word *atomic.Uint64, mask uint64) bool) {
	h := maphash.Bytes(f.seed, key)
	b := (h >> 32) * f.blocks >> 32 // scales the high half to [0, blocks)
	block := f.words[b*blockWords : (b+1)*blockWords]
	// Double hashing within the block: h2 is odd, so the probes of a key
	// are distinct bits.
	h1, h2 := uint32(h), uint32(h>>16)|1
	for i := uint32(0); i < keyFilterProbes; i++ {
		bit := (h1 + i*h2) % blockBits
		if !visit(&block[bit/64], 1<<(bit%64)) {
			break
		}
	}
	// block may be memory outside the Go heap, which f's cleanup unmaps:
	// f must stay reachable until the last probe.
	runtime.KeepAlive(f)
}

func (f *keyFilter) add(key []byte) {
	f.probes(key, func(word *atomic.Uint64, mask uint64) bool {
		if word.Load()&mask == 0 {
			word.Or(mask)
		}
		return true
	})
}

// mayContain reports false only if key has never been in the latest space
// since the store's data was written.
func (f *keyFilter) mayContain(key []byte) bool {
	if !f.ready.Load() {
		return true
	}
	all := true
	f.probes(key, func(word *atomic.Uint64, mask uint64) bool {
		all = word.Load()&mask != 0
		return all
	})
	return all
}

// fill adds every key of the latest space in db, then makes the filter
// answer. It stops early, leaving the filter answering "maybe", when stop is
// closed. It runs on a goroutine the Store owns.
func (f *keyFilter) fill(db *pebble.DB, logger *slog.Logger, stop <-chan struct{}) {
	iter, err := db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{storage.PrefixLatest},
		UpperBound: []byte{storage.PrefixLatest + 1},
	})
	if err != nil {
		logger.Error("key filter not built; every put looks its key up", "err", fmt.Errorf("mvcc: open iterator: %w", err))
		return
	}
	n := 0
	for valid := iter.First(); valid; valid = iter.Next() {
		if n++; n%4096 == 0 {
			select {
			case <-stop:
				_ = iter.Close()
				return
			default:
			}
		}
		f.add(iter.Key()[1:])
	}
	if err := iter.Close(); err != nil {
		logger.Error("key filter not built; every put looks its key up", "err", fmt.Errorf("mvcc: scan latest keys: %w", err))
		return
	}
	f.ready.Store(true)
	logger.Debug("key filter built", "keys", n)
}
