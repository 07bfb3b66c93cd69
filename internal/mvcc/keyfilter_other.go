//go:build !unix

package mvcc

import "sync/atomic"

// filterWords returns n zeroed words for owner's bits: from the Go heap
// here, where no anonymous mapping is at hand (see keyfilter_unix.go).
func filterWords(owner *keyFilter, n int) []atomic.Uint64 {
	return make([]atomic.Uint64, n)
}
