package raftnode

import "sync"

// inbox is a bounded queue that many goroutines fill and the raft loop
// empties in one swap. Under heavy fan-in it is cheaper than a channel: a
// sender holds one short mutex, and wakes the loop only when it made the
// queue non-empty.
type inbox[T any] struct {
	mu    sync.Mutex // guards items; never held while blocking
	items []T
	max   int
	wake  chan struct{} // buffered 1: "the queue became non-empty"
}

func newInbox[T any](max int) *inbox[T] {
	return &inbox[T]{max: max, wake: make(chan struct{}, 1)}
}

// push queues v; it reports false if the queue is full.
func (q *inbox[T]) push(v T) bool {
	q.mu.Lock()
	if len(q.items) >= q.max {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, v)
	first := len(q.items) == 1
	q.mu.Unlock()
	if first {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// drain takes everything queued, handing the queue spare (emptied) to fill
// next, so two buffers alternate and the steady state allocates nothing.
func (q *inbox[T]) drain(spare []T) []T {
	clear(spare)
	q.mu.Lock()
	items := q.items
	q.items = spare[:0]
	q.mu.Unlock()
	return items
}
