package mvcc

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// An aborted batch's puts never happened: the key cache must forget them, or
// the next put would count a version that does not exist.
func TestAbortForgetsCachedKeys(t *testing.T) {
	ts := newTestStore(t)
	ts.put("k", "v1") // revision 2, version 1

	b := ts.s.NewBatch()
	if _, err := b.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("lost")}, noLeases); err != nil {
		t.Fatalf("put: %v", err)
	}
	if _, err := b.Put(&pb.PutRequest{Key: []byte("new"), Value: []byte("lost")}, noLeases); err != nil {
		t.Fatalf("put: %v", err)
	}
	b.Abort()

	ts.put("k", "v2")
	ts.put("new", "v")
	checkKV(t, "k", ts.get("k", 0), "k", "v2", 2, 3, 2, 0)
	checkKV(t, "new", ts.get("new", 0), "new", "v", 4, 4, 1, 0)
}

func TestKeyCacheEvictsWhenFull(t *testing.T) {
	c := newKeyCache(2, 1000)
	for _, k := range []string{"a", "b", "c", "d"} {
		c.set([]byte(k), keyMeta{exists: true, version: 1})
	}
	if n := len(c.entries); n != 2 {
		t.Fatalf("cache holds %d entries, want 2", n)
	}
	c.set([]byte("d"), keyMeta{exists: true, version: 2})
	if m, ok := c.get([]byte("d")); !ok || m.version != 2 {
		t.Fatalf("overwrite of a cached key: %+v %v", m, ok)
	}
}

func TestKeyCacheBoundsKeyBytes(t *testing.T) {
	c := newKeyCache(100, 10)
	for _, k := range []string{"aaaa", "bbbb", "cccc"} {
		c.set([]byte(k), keyMeta{exists: true})
	}
	if c.bytes > 10 || len(c.entries) != 2 {
		t.Fatalf("cache holds %d entries of %d key bytes, want 2 within 10", len(c.entries), c.bytes)
	}
	c.set([]byte("a key longer than the whole cache"), keyMeta{exists: true})
	if _, ok := c.get([]byte("a key longer than the whole cache")); ok || c.bytes > 10 {
		t.Fatalf("a key larger than the cache was cached (%d bytes held)", c.bytes)
	}
	c.reset()
	if c.bytes != 0 || len(c.entries) != 0 {
		t.Fatalf("reset left %d entries, %d bytes", len(c.entries), c.bytes)
	}
}

func TestKeyCacheForget(t *testing.T) {
	c := newKeyCache(10, 100)
	c.set([]byte("gone"), keyMeta{})
	c.set([]byte("kept"), keyMeta{exists: true, version: 2})
	c.forget([]byte("gone"))
	c.forget([]byte("never cached"))
	if _, ok := c.get([]byte("gone")); ok {
		t.Fatalf("forgotten key still cached")
	}
	if m, ok := c.get([]byte("kept")); !ok || m.version != 2 {
		t.Fatalf("forget removed another key: %+v %v", m, ok)
	}
	if c.bytes != len("kept") {
		t.Fatalf("cache counts %d key bytes, want %d", c.bytes, len("kept"))
	}
}
