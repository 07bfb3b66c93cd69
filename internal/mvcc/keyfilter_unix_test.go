//go:build unix

package mvcc

import (
	"runtime"
	"testing"
)

// TestKeyFilterOutsideHeap: the filter's 5 MiB of bits are not Go heap, where
// they would raise the GC's target by GOGC percent of their size (see
// filterWords), and the filter works from there.
func TestKeyFilterOutsideHeap(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f := newKeyFilter(keyFilterKeys)
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 1<<20 {
		t.Fatalf("the heap grew by %d bytes for a filter of %d", grew, len(f.words)*8)
	}
	f.ready.Store(true)
	f.add([]byte("k"))
	if !f.mayContain([]byte("k")) {
		t.Fatalf("an added key was denied")
	}
	// A dropped filter is unmapped by its cleanup; the next one works.
	f = nil
	runtime.GC()
	runtime.GC()
	g := newKeyFilter(keyFilterKeys)
	g.ready.Store(true)
	g.add([]byte("k"))
	if !g.mayContain([]byte("k")) {
		t.Fatalf("an added key was denied")
	}
}
