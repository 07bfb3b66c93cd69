//go:build unix

package mvcc

import (
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// filterWords returns n zeroed words for owner's bits, mapped outside the
// Go heap and unmapped once owner is unreachable. The filter is 5 MiB,
// fixed, and holds no pointers: in the heap it would only count as live
// data, and the GC lets the heap grow past its live data by GOGC percent
// (400 in cmd/plinth while the heap is small), so its 5 MiB would let 20
// MiB of garbage stay resident before a collection. Its pages, untouched
// until keys set their bits, cost resident memory only as keys are written,
// as they do in the heap. The heap is the fallback if the mapping fails.
func filterWords(owner *keyFilter, n int) []atomic.Uint64 {
	mem, err := syscall.Mmap(-1, 0, n*8, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]atomic.Uint64, n)
	}
	runtime.AddCleanup(owner, func(mem []byte) { _ = syscall.Munmap(mem) }, mem)
	return unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(unsafe.SliceData(mem))), n)
}
