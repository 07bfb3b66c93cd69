package server

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"

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
// and one keep-alive stream on it, which every keep-alive reaching this
// member shares: a follower adds one hop to a renewal, not a stream.
type leaseForwarder struct {
	s *Server

	// mu guards the fields below. It is held while reading the leader's
	// record and dialing it (neither waits on the network), never across
	// a request.
	mu   sync.Mutex
	lead uint64
	conn *grpc.ClientConn
	link *keepAliveLink // nil until needed, or after it broke
	wg   sync.WaitGroup // the links' receive loops
	done bool           // set by close
}

// keepAliveLink is one keep-alive stream to the leader. The leader answers
// every request once, answers to different leases in any order; an answer
// goes to the oldest waiter for its lease.
type keepAliveLink struct {
	stream pb.Lease_LeaseKeepAliveClient
	cancel context.CancelFunc
	sendMu sync.Mutex // serializes Send

	mu      sync.Mutex // guards the fields below
	waiting map[int64][]chan renewAnswer
	err     error // set once the stream broke
}

type renewAnswer struct {
	ttl int64
	err error
}

// errLinkBroken marks a renewal that was lost with its stream (the leader
// changed or went away): it may be tried again.
var errLinkBroken = errors.New("server: keep-alive stream to the leader broke")

// errForwarderClosed answers what reaches the forwarder after it closed.
var errForwarderClosed = errors.New("server: stopping: no more forwarding to the leader")

// renew renews lease id on the leader. errLinkBroken says the renewal was
// lost with the stream, and may be tried again.
func (f *leaseForwarder) renew(ctx context.Context, id int64) (int64, error) {
	link, err := f.keepAliveLink()
	if err != nil {
		return 0, err
	}
	ch := make(chan renewAnswer, 1)
	link.mu.Lock()
	if link.err != nil {
		link.mu.Unlock()
		return 0, link.err
	}
	link.waiting[id] = append(link.waiting[id], ch)
	link.mu.Unlock()
	link.sendMu.Lock()
	err = link.stream.Send(&pb.LeaseKeepAliveRequest{ID: id})
	link.sendMu.Unlock()
	if err != nil {
		f.broke(link, err)
	}
	select {
	case a := <-ch:
		if a.err == nil && a.ttl <= 0 {
			return 0, lease.ErrNotFound
		}
		return a.ttl, a.err
	case <-ctx.Done():
		// The answer may still come: the channel has room for it, and the
		// next answer for this lease goes to the next waiter.
		link.mu.Lock()
		q := link.waiting[id]
		for i, c := range q {
			if c == ch {
				link.waiting[id] = append(q[:i:i], q[i+1:]...)
				break
			}
		}
		link.mu.Unlock()
		return 0, ctx.Err()
	}
}

// keepAliveLink returns the keep-alive stream to the current leader, opening
// it if needed.
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
	stream, err := pb.NewLeaseClient(conn).LeaseKeepAlive(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: %w", errLinkBroken, err)
	}
	link := &keepAliveLink{stream: stream, cancel: cancel, waiting: map[int64][]chan renewAnswer{}}
	f.link = link
	f.wg.Add(1)
	go f.receive(link)
	return link, nil
}

// receive hands the leader's answers to their waiters until the stream
// breaks.
func (f *leaseForwarder) receive(link *keepAliveLink) {
	defer f.wg.Done()
	for {
		resp, err := link.stream.Recv()
		if err != nil {
			f.broke(link, err)
			return
		}
		link.mu.Lock()
		var ch chan renewAnswer
		if q := link.waiting[resp.ID]; len(q) > 0 {
			ch = q[0]
			if len(q) == 1 {
				delete(link.waiting, resp.ID)
			} else {
				link.waiting[resp.ID] = q[1:]
			}
		}
		link.mu.Unlock()
		if ch != nil {
			ch <- renewAnswer{ttl: resp.TTL}
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
	link.waiting = map[int64][]chan renewAnswer{}
	link.mu.Unlock()
	for _, q := range waiting {
		for _, ch := range q {
			ch <- renewAnswer{err: link.err}
		}
	}
	f.mu.Lock()
	if f.link == link {
		f.link = nil
	}
	f.mu.Unlock()
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
