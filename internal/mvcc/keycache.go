package mvcc

// keyCache remembers, for recently overwritten or deleted keys, what a put
// needs to know of the key's newest version: whether it exists, its create
// revision and its version. Without it every overwrite pays a Pebble lookup
// of the key. It never holds a live first version: overwriting one needs the
// lookup anyway, to copy the version into history (see keys.go), so a
// create, the commonest write, does not touch the cache. It is bounded (a
// random entry goes when it is full), so the store's size is never tied to
// memory, and it is owned by the write path: only Batch methods, on the
// apply goroutine, touch it.
//
// The cache must agree with the state the batch it serves sees. Entries are
// written as the batch stages writes; a batch that is not committed empties
// the cache (Abort), because its entries would describe writes that never
// happened.
type keyCache struct {
	maxEntries int
	maxBytes   int
	bytes      int // key bytes held
	entries    map[string]keyMeta
}

// keyMeta is a key's newest version as far as a put, or a compare of
// anything but its value, is concerned.
type keyMeta struct {
	exists         bool
	createRevision int64
	modRevision    int64 // kept in the cache only; lookups for a put leave it 0
	version        int64
	lease          int64 // the lease the version is attached to, 0 for none
}

// Bounds of the cache: by entries, and by key bytes, since a key can be as
// large as a request.
const (
	keyCacheEntries = 1 << 20
	keyCacheBytes   = 64 << 20
)

func newKeyCache(maxEntries, maxBytes int) *keyCache {
	return &keyCache{maxEntries: maxEntries, maxBytes: maxBytes, entries: make(map[string]keyMeta)}
}

func (c *keyCache) get(key []byte) (keyMeta, bool) {
	m, ok := c.entries[string(key)]
	return m, ok
}

func (c *keyCache) set(key []byte, m keyMeta) {
	if len(key) > c.maxBytes {
		return
	}
	if _, ok := c.entries[string(key)]; !ok {
		for len(c.entries) > 0 && (len(c.entries) >= c.maxEntries || c.bytes+len(key) > c.maxBytes) {
			for k := range c.entries {
				delete(c.entries, k) // map iteration starts at a random entry
				c.bytes -= len(k)
				break
			}
		}
		c.bytes += len(key)
	}
	c.entries[string(key)] = m
}

func (c *keyCache) forget(key []byte) {
	if _, ok := c.entries[string(key)]; ok {
		delete(c.entries, string(key))
		c.bytes -= len(key)
	}
}

func (c *keyCache) reset() {
	clear(c.entries)
	c.bytes = 0
}
