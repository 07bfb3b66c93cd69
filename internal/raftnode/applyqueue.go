package raftnode

import "sync"

// maxApplyBacklog is how many bytes of committed entries may wait for the
// apply loop before the raft loop holds back: a leader stops taking new
// proposals, a follower stops taking new entries from the leader (Raft
// resends them). Either way the raft loop itself goes on ticking and
// heartbeating, however long one apply takes.
const maxApplyBacklog = 64 << 20

// applyQueue hands work from the raft loop to the apply loop. Pushing never
// blocks: the raft loop must not wait for a long apply (DESIGN.md: "the raft
// loop keeps ticking"). The backlog is bounded instead by the raft loop
// consulting full.
type applyQueue struct {
	mu    sync.Mutex // guards the fields below; never held while applying
	tasks []applyTask
	bytes int // of the entries queued or being applied
	wake  chan struct{}
}

func newApplyQueue() *applyQueue { return &applyQueue{wake: make(chan struct{}, 1)} }

func taskBytes(t applyTask) int {
	n := 0
	for _, e := range t.ents {
		n += len(e.GetData())
	}
	return n
}

func (q *applyQueue) push(t applyTask) {
	q.mu.Lock()
	q.tasks = append(q.tasks, t)
	q.bytes += taskBytes(t)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns every queued task, in order.
func (q *applyQueue) take() []applyTask {
	q.mu.Lock()
	defer q.mu.Unlock()
	tasks := q.tasks
	q.tasks = nil
	return tasks
}

// done records that t was applied.
func (q *applyQueue) done(t applyTask) {
	q.mu.Lock()
	q.bytes -= taskBytes(t)
	q.mu.Unlock()
}

// full reports whether the backlog reached maxApplyBacklog.
func (q *applyQueue) full() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes >= maxApplyBacklog
}
