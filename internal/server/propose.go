package server

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/api"
	"github.com/plinthdb/plinth/internal/apply"
	"github.com/plinthdb/plinth/internal/entry"
	"github.com/plinthdb/plinth/internal/raftnode"
)

// Propose implements api.Backend: it gives req an ID, replicates it, and waits
// until the apply loop returns its answer.
//
// A request that is not answered within the request timeout fails with
// api.ErrTimeout, as etcd's does, so a client is never left hanging: the wait
// registry's sweeper fails it.
func (s *Server) Propose(ctx context.Context, req *pb.InternalRaftRequest) (proto.Message, error) {
	req.ID = s.ids.next()
	data, size, err := entry.Encode(req)
	if err != nil {
		return nil, err
	}
	if size > s.cfg.MaxRequestBytes {
		return nil, api.ErrRequestTooLarge
	}
	return s.await(ctx, req.ID, func() error { return s.node.Propose(req.ID, data) })
}

// await registers a waiter for request id, proposes it with propose, and
// waits for its applied answer.
func (s *Server) await(ctx context.Context, id uint64, propose func() error) (proto.Message, error) {
	ch := s.waits.register(id)
	s.watches.NoteWrite()
	s.metrics.proposalsPending.Inc()
	defer s.metrics.proposalsPending.Dec()
	if err := propose(); err != nil {
		s.waits.cancel(id)
		s.metrics.proposalsFailed.Inc()
		return nil, err
	}
	select {
	case r := <-ch:
		s.waits.release(ch)
		if r.Err != nil {
			return nil, r.Err
		}
		if r.Done != nil {
			select {
			case <-r.Done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return r.Resp, nil
	case <-ctx.Done():
		s.waits.cancel(id)
		s.metrics.proposalsFailed.Inc()
		return nil, ctx.Err()
	}
}

// proposalDropped is raftnode's OnDropped: the proposer learns at once.
func (s *Server) proposalDropped(id uint64, err error) {
	s.metrics.proposalsFailed.Inc()
	if errors.Is(err, raftnode.ErrDropped) && s.node.Leader() == 0 {
		err = api.ErrNoLeader
	}
	s.waits.trigger(id, apply.Result{ID: id, Err: err})
}

// requestTimeout is etcd's: 5s plus two election timeouts.
func (s *Server) requestTimeout() time.Duration {
	return 5*time.Second + 2*s.cfg.ElectionTimeout
}

// idGenerator makes request IDs unique across members and restarts: the top
// 16 bits are the member's, the rest count up from the start time in
// milliseconds (shifted left 8 bits to leave room within a millisecond).
type idGenerator struct {
	prefix uint64
	suffix atomic.Uint64
}

const idSuffixBits = 48

func newIDGenerator(memberID uint64, now time.Time) *idGenerator {
	g := &idGenerator{prefix: (memberID & 0xffff) << idSuffixBits}
	g.suffix.Store((uint64(now.UnixMilli()) << 8) & (1<<idSuffixBits - 1))
	return g
}

func (g *idGenerator) next() uint64 {
	return g.prefix | (g.suffix.Add(1) & (1<<idSuffixBits - 1))
}

// waitRegistry connects proposers with the results of their entries, and
// fails the ones that waited longer than the request timeout.
type waitRegistry struct {
	mu      sync.Mutex // guards the fields below; never held while sending
	waiting map[uint64]waiter
	now     int64 // coarse clock in ticks of the sweeper, for registration times
}

type waiter struct {
	ch    chan apply.Result
	since int64
}

func (w *waitRegistry) init() { w.waiting = map[uint64]waiter{} }

// resultChans recycles the channels proposers wait on: one per request
// otherwise.
var resultChans = sync.Pool{New: func() any { return make(chan apply.Result, 1) }}

func (w *waitRegistry) register(id uint64) chan apply.Result {
	ch := resultChans.Get().(chan apply.Result)
	w.mu.Lock()
	w.waiting[id] = waiter{ch: ch, since: w.now}
	w.mu.Unlock()
	return ch
}

// release returns ch, registered and then received from, for reuse. Each
// registration is sent on at most once (whoever sends removes it from the
// registry first), so after that receive nothing else can reach ch. A
// channel whose waiter gave up is never released: a send may still come.
func (w *waitRegistry) release(ch chan apply.Result) { resultChans.Put(ch) }

func (w *waitRegistry) cancel(id uint64) {
	w.mu.Lock()
	delete(w.waiting, id)
	w.mu.Unlock()
}

// pending reports whether any proposer is waiting.
func (w *waitRegistry) pending() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.waiting) > 0
}

// trigger delivers r to its proposer, if it is still waiting on this member.
func (w *waitRegistry) trigger(id uint64, r apply.Result) {
	w.mu.Lock()
	wt, ok := w.waiting[id]
	delete(w.waiting, id)
	w.mu.Unlock()
	if ok {
		wt.ch <- r
	}
}

// tick advances the coarse clock and fails every waiter registered more than
// maxAge ticks ago with err. It returns how many it failed.
func (w *waitRegistry) tick(maxAge int64, err error) int {
	var expired []chan apply.Result
	w.mu.Lock()
	w.now++
	for id, wt := range w.waiting {
		if w.now-wt.since > maxAge {
			expired = append(expired, wt.ch)
			delete(w.waiting, id)
		}
	}
	w.mu.Unlock()
	for _, ch := range expired {
		ch <- apply.Result{Err: err}
	}
	return len(expired)
}

func (w *waitRegistry) failAll(err error) {
	w.mu.Lock()
	waiting := w.waiting
	w.waiting = map[uint64]waiter{}
	w.mu.Unlock()
	for _, wt := range waiting {
		wt.ch <- apply.Result{Err: err}
	}
}
