package server

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/plinthdb/plinth/internal/api"
	"github.com/plinthdb/plinth/internal/lease"
	"github.com/plinthdb/plinth/internal/membership"
)

// leaseForwarder carries a follower's keep-alives and time-to-live questions
// to the leader's client URL. It keeps one connection to the current leader
// and one renewal stream on it, which every keep-alive reaching this member
// shares, in batches: a follower adds one hop to a renewal, not a stream,
// and many renewals share each message of that hop.
type leaseForwarder struct {
	s *Server

	// mu guards the fields below. It is held while reading the leader's
	// record and dialing it (neither waits on the network), never across
	// a request.
	mu   sync.Mutex
	lead uint64
	conn *grpc.ClientConn
	link *keepAliveLink // nil until needed, or after it broke
	// etcdStreamTo is a leader that answered the batched renewal stream
	// with Unimplemented (a plinth from before it): its renewals go over
	// an etcd keep-alive stream instead, one message each.
	etcdStreamTo uint64
	wg           sync.WaitGroup // the links' send and receive loops
	done         bool           // set by close

	// ticks counts expire's calls: a renewal's age is the ticks since
	// it was queued.
	ticks atomic.Int64
}

// keepAliveLink is one renewal stream to the leader. The leader answers every
// renewal once; an answer goes to the oldest waiter for its lease.
type keepAliveLink struct {
	stream renewalStream
	lead   uint64
	ctx    context.Context
	cancel context.CancelFunc
	sendC  chan struct{} // capacity 1: renewals are pending
	// unanswered holds a token per message the leader has yet to answer,
	// when the stream batches (nil otherwise): with a message on its way,
	// renewals gather for the next one instead of going one by one.
	unanswered chan struct{}

	mu      sync.Mutex // guards the fields below
	waiting map[int64][]renewWaiter
	pending []int64 // renewals not sent yet, in order
	err     error   // set once the stream broke
}

// renewWaiter is a renewal waiting for the leader's answer: a goroutine
// waiting on ch, or (ch nil) a callback, which must not block.
type renewWaiter struct {
	ch     chan renewAnswer
	answer func(renewAnswer)
	since  int64 // the forwarder's ticks when it was queued
}

func (w renewWaiter) deliver(a renewAnswer) {
	if w.ch == nil {
		w.answer(a)
		return
	}
	w.ch <- a
}

type renewAnswer struct {
	ttl int64
	err error
}

// renewalStream is the way renewals travel to the leader: plinth's batched
// renewal stream, or (to a leader without it) etcd's keep-alive stream.
type renewalStream interface {
	send(ids []int64) error
	// recv returns the next answers: lease IDs and their TTLs (0 for a
	// lease the leader does not have).
	recv() ([]*pb.LeaseCheckpoint, error)
}

// maxRenewalBatch bounds the renewals of one message to the leader.
const maxRenewalBatch = 4096

// renewalMessagesInFlight bounds the messages of renewals sent to the leader
// and not answered yet. Two: one on its way while the next gathers, so a
// renewal waits at most about a round trip to the leader before it is sent.
const renewalMessagesInFlight = 2

// errLinkBroken marks a renewal that was lost with its stream (the leader
// changed or went away): it may be tried again.
var errLinkBroken = errors.New("server: keep-alive stream to the leader broke")

// errForwarderClosed answers what reaches the forwarder after it closed.
var errForwarderClosed = errors.New("server: stopping: no more forwarding to the leader")

// renew renews lease id on the leader. errLinkBroken says the renewal was
// lost with the stream, and may be tried again; api.ErrTimeout that the
// leader did not answer in time (see expire).
func (f *leaseForwarder) renew(ctx context.Context, id int64) (int64, error) {
	link, err := f.keepAliveLink()
	if err != nil {
		return 0, err
	}
	ch := make(chan renewAnswer, 1)
	if err := link.queue(id, renewWaiter{ch: ch, since: f.ticks.Load()}); err != nil {
		return 0, err
	}
	select {
	case a := <-ch:
		return a.result()
	case <-ctx.Done():
		// The answer may still come: the channel has room for it, and the
		// next answer for this lease goes to the next waiter.
		link.mu.Lock()
		q := link.waiting[id]
		for i, w := range q {
			if w.ch == ch {
				link.waiting[id] = append(q[:i:i], q[i+1:]...)
				break
			}
		}
		link.mu.Unlock()
		return 0, ctx.Err()
	}
}

// renewLater queues a renewal of lease id to the leader, whose outcome, as
// renew would return it, goes to answer from another goroutine. It returns
// false, having queued nothing, when there is no stream to the leader to
// queue it on. answer must not block.
func (f *leaseForwarder) renewLater(id int64, answer func(ttl int64, err error)) bool {
	link, err := f.keepAliveLink()
	if err != nil {
		return false
	}
	w := renewWaiter{answer: func(a renewAnswer) { answer(a.result()) }, since: f.ticks.Load()}
	return link.queue(id, w) == nil
}

// queue adds a renewal of lease id and its waiter to the link, and wakes its
// sender; it returns the link's error if the link broke.
func (link *keepAliveLink) queue(id int64, w renewWaiter) error {
	link.mu.Lock()
	if link.err != nil {
		link.mu.Unlock()
		return link.err
	}
	link.waiting[id] = append(link.waiting[id], w)
	link.pending = append(link.pending, id)
	link.mu.Unlock()
	select {
	case link.sendC <- struct{}{}:
	default: // the sender is signaled already
	}
	return nil
}

// result is the answer as renew returns it: a TTL of 0 is the leader's word
// that the lease is gone.
func (a renewAnswer) result() (int64, error) {
	if a.err == nil && a.ttl <= 0 {
		return 0, lease.ErrNotFound
	}
	return a.ttl, a.err
}

// keepAliveLink returns the renewal stream to the current leader, opening it
// if needed.
func (f *leaseForwarder) keepAliveLink() (*keepAliveLink, error) {
	conn, err := f.leaderConn()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return nil, errForwarderClosed
	}
	if f.link != nil {
		return f.link, nil
	}
	ctx, cancel := context.WithCancel(f.s.stopCtx)
	var stream renewalStream
	if f.etcdStreamTo == f.lead {
		stream, err = openEtcdKeepAlives(ctx, conn)
	} else {
		stream, err = openRenewals(ctx, conn)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: %w", errLinkBroken, err)
	}
	link := &keepAliveLink{stream: stream, lead: f.lead, ctx: ctx, cancel: cancel, sendC: make(chan struct{}, 1), waiting: map[int64][]renewWaiter{}}
	if _, batched := stream.(renewals); batched {
		link.unanswered = make(chan struct{}, renewalMessagesInFlight)
	}
	f.link = link
	f.wg.Add(2)
	go f.send(link)
	go f.receive(link)
	return link, nil
}

// send sends the pending renewals, as many as have gathered, in one message,
// until the stream breaks: renewals that come while a message is on its way
// go together in the next.
func (f *leaseForwarder) send(link *keepAliveLink) {
	defer f.wg.Done()
	for {
		select {
		case <-link.ctx.Done():
			return
		case <-link.sendC:
		}
		for {
			if link.unanswered != nil {
				// Wait for a message's answer before taking what
				// gathered meanwhile.
				select {
				case link.unanswered <- struct{}{}:
				case <-link.ctx.Done():
					return
				}
			}
			link.mu.Lock()
			ids := link.pending
			if len(ids) > maxRenewalBatch {
				ids = ids[:maxRenewalBatch:maxRenewalBatch]
				link.pending = link.pending[maxRenewalBatch:]
			} else {
				link.pending = nil
			}
			link.mu.Unlock()
			if len(ids) == 0 {
				if link.unanswered != nil {
					<-link.unanswered
				}
				break
			}
			if err := link.stream.send(ids); err != nil {
				f.broke(link, err)
				return
			}
		}
	}
}

// receive hands the leader's answers to their waiters until the stream
// breaks.
func (f *leaseForwarder) receive(link *keepAliveLink) {
	defer f.wg.Done()
	for {
		answers, err := link.stream.recv()
		if err != nil {
			if status.Code(err) == codes.Unimplemented {
				f.mu.Lock()
				f.etcdStreamTo = link.lead
				f.mu.Unlock()
			}
			f.broke(link, err)
			return
		}
		if link.unanswered != nil {
			<-link.unanswered
		}
		for _, a := range answers {
			link.mu.Lock()
			var w renewWaiter
			q := link.waiting[a.ID]
			if len(q) > 0 {
				w = q[0]
				if len(q) == 1 {
					delete(link.waiting, a.ID)
				} else {
					link.waiting[a.ID] = q[1:]
				}
			}
			link.mu.Unlock()
			if len(q) > 0 {
				w.deliver(renewAnswer{ttl: a.Remaining_TTL})
			}
		}
	}
}

// broke ends link: its waiters fail, and the next renewal opens a new one.
func (f *leaseForwarder) broke(link *keepAliveLink, err error) {
	link.cancel()
	link.mu.Lock()
	if link.err == nil {
		link.err = fmt.Errorf("%w: %w", errLinkBroken, err)
	}
	waiting := link.waiting
	link.waiting = map[int64][]renewWaiter{}
	link.pending = nil
	link.mu.Unlock()
	for _, q := range waiting {
		for _, w := range q {
			w.deliver(renewAnswer{err: link.err})
		}
	}
	f.mu.Lock()
	if f.link == link {
		f.link = nil
	}
	f.mu.Unlock()
}

// expire fails with api.ErrTimeout the renewals that waited more than
// maxAge calls of it for the leader's answer, and returns how many. A
// renewal has no timer of its own: a follower forwards thousands a second.
// The leader's answer to an expired renewal, if it comes, goes to the next
// waiter for the lease, as after a waiter gave up.
func (f *leaseForwarder) expire(maxAge int64) int {
	now := f.ticks.Add(1)
	f.mu.Lock()
	link := f.link
	f.mu.Unlock()
	if link == nil {
		return 0 // a link that broke failed its waiters
	}
	var expired []renewWaiter
	link.mu.Lock()
	for id, q := range link.waiting {
		kept := q[:0]
		for _, w := range q {
			if now-w.since > maxAge {
				expired = append(expired, w)
			} else {
				kept = append(kept, w)
			}
		}
		if len(kept) == 0 {
			delete(link.waiting, id)
		} else {
			link.waiting[id] = kept
		}
	}
	link.mu.Unlock()
	for _, w := range expired {
		w.deliver(renewAnswer{err: api.ErrTimeout})
	}
	return len(expired)
}

// timeToLive asks the leader for a lease's remaining TTL.
func (f *leaseForwarder) timeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	conn, err := f.leaderConn()
	if err != nil {
		return nil, err
	}
	resp, err := pb.NewLeaseClient(conn).LeaseTimeToLive(ctx, req)
	if status.Code(err) == codes.Unavailable {
		// The leader stopped or cannot be reached: ask the next one.
		return nil, fmt.Errorf("%w: %w", errLinkBroken, err)
	}
	return resp, err
}

// leaderConn returns a connection to the current leader's client URL. A
// change of leader closes the connection to the old one, and its stream.
func (f *leaseForwarder) leaderConn() (*grpc.ClientConn, error) {
	s := f.s
	lead := s.node.Leader()
	if lead == 0 || lead == s.memberID {
		// This member may lead without having seen it yet: ask again.
		return nil, api.ErrNoLeader
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return nil, errForwarderClosed
	}
	if f.lead == lead && f.conn != nil {
		return f.conn, nil
	}
	f.closeLocked()
	m, found, err := membership.Get(s.db, lead)
	if err != nil {
		return nil, err
	}
	if !found || len(m.ClientURLs) == 0 {
		return nil, fmt.Errorf("%w: the leader %x has not published its client URLs", api.ErrNoLeader, lead)
	}
	u, err := url.Parse(m.ClientURLs[0])
	if err != nil {
		return nil, fmt.Errorf("leader %x's client URL %q: %w", lead, m.ClientURLs[0], err)
	}
	conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial the leader %x: %w", lead, err)
	}
	f.lead, f.conn = lead, conn
	return conn, nil
}

// closeLocked drops the connection and stream to the old leader. The
// stream's receive loop fails its waiters as the stream ends.
func (f *leaseForwarder) closeLocked() {
	if f.link != nil {
		f.link.cancel()
		f.link = nil
	}
	if f.conn != nil {
		_ = f.conn.Close()
		f.conn = nil
	}
	f.lead = 0
}

// close ends forwarding, once the server's own services stopped.
func (f *leaseForwarder) close() {
	f.mu.Lock()
	f.done = true
	f.closeLocked()
	f.mu.Unlock()
	f.wg.Wait()
}
