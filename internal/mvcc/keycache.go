package mvcc

// keyCache remembers, for recently written keys, what a put needs to know of
// the key's newest version: whether it exists, its create revision and its
// version. Without it every put pays a Pebble lookup of the key it
// overwrites. It is bounded (a random entry goes when it is full), so the
// store's size is never tied to memory, and it is owned by the write path:
// only Batch methods, on the apply goroutine, touch it.
//
// The cache must agree with the state the batch it serves sees. Entries are
// written as the batch stages writes; a batch that is not committed empties
// the cache (Abort), because its entries would describe writes that never
// happened.
type keyCache struct {
	max     int
	entries map[string]keyMeta
}

// keyMeta is a key's newest version as far as a put is concerned.
type keyMeta struct {
	exists         bool
	createRevision int64
	version        int64
}

// keyCacheSize bounds the cache: about 100 bytes an entry with its key.
const keyCacheSize = 1 << 20

func newKeyCache(max int) *keyCache {
	return &keyCache{max: max, entries: make(map[string]keyMeta)}
}

func (c *keyCache) get(key []byte) (keyMeta, bool) {
	m, ok := c.entries[string(key)]
	return m, ok
}

func (c *keyCache) set(key []byte, m keyMeta) {
	if _, ok := c.entries[string(key)]; !ok && len(c.entries) >= c.max {
		for k := range c.entries {
			delete(c.entries, k) // map iteration starts at a random entry
			break
		}
	}
	c.entries[string(key)] = m
}

func (c *keyCache) reset() { clear(c.entries) }
