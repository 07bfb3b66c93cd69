package api

import (
	"context"
	"errors"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/plinthdb/plinth/internal/lease"
)

// LeaseBackend is what the Lease service needs from the server: grants and
// revokes go through Propose; keep-alives and remaining TTLs are the
// leader's to answer, and the server forwards them there.
type LeaseBackend interface {
	Backend
	// MinLeaseTTL is the smallest TTL a lease gets, in seconds.
	MinLeaseTTL() int64
	// NewLeaseID returns a fresh positive lease ID for a grant that asks
	// the server to choose.
	NewLeaseID() int64
	// LeaseRenewHere renews a lease that this member can renew at once,
	// without waiting (it keeps the leases' time and has applied the
	// lease's grant): ok is false when the renewal must go through
	// LeaseRenewLater instead.
	LeaseRenewHere(id int64) (ttl int64, ok bool)
	// LeaseRenewLater restarts a lease's TTL and calls done once with the
	// TTL it was granted (lease.ErrNotFound for a lease that is gone or
	// expired), maybe from another goroutine, maybe before it returns.
	// done must not block.
	LeaseRenewLater(ctx context.Context, id int64, done func(ttl int64, err error))
	// LeaseTimeToLive answers req (lease.ErrNotFound for an unknown lease).
	LeaseTimeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error)
	// LeaseIDs lists the leases this member has applied.
	LeaseIDs() []int64
	// Stopping is closed when the member begins to stop: keep-alive
	// streams, which clients hold open, end then instead of holding up
	// the stop. (A handler waiting in Recv does not see it; the server
	// does not wait for such streams when it stops.)
	Stopping() <-chan struct{}
}

// Lease serves the etcd Lease service.
type Lease struct {
	pb.UnimplementedLeaseServer
	b LeaseBackend
}

// NewLease returns the Lease service over b.
func NewLease(b LeaseBackend) *Lease { return &Lease{b: b} }

// LeaseGrant implements Lease.LeaseGrant. A TTL below the minimum is raised
// to it here, so that every member applies the same TTL.
func (s *Lease) LeaseGrant(ctx context.Context, req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if req.TTL > lease.MaxTTL {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	grant := &pb.LeaseGrantRequest{ID: req.ID, TTL: max(req.TTL, s.b.MinLeaseTTL())}
	for grant.ID == 0 {
		grant.ID = s.b.NewLeaseID()
	}
	return propose[*pb.LeaseGrantResponse](ctx, s.b, func(r *pb.InternalRaftRequest) { r.LeaseGrant = grant })
}

// LeaseRevoke implements Lease.LeaseRevoke.
func (s *Lease) LeaseRevoke(ctx context.Context, req *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return propose[*pb.LeaseRevokeResponse](ctx, s.b, func(r *pb.InternalRaftRequest) { r.LeaseRevoke = req })
}

// keepAlivesInFlight bounds the renewals of one keep-alive stream that are
// answered at once. A follower's renewals wait a round trip to the leader:
// answering them one by one would limit a stream to one per round trip.
const keepAlivesInFlight = 64

// renewal is the outcome of a renewal that did not complete at once.
type renewal struct {
	resp *pb.LeaseKeepAliveResponse
	err  error
}

// recvEnd is how a keep-alive stream's receiving goroutine stopped: the
// client closed its side or went away (sent false), or an answer could not be
// sent (sent true).
type recvEnd struct {
	err  error
	sent bool
}

// LeaseKeepAlive implements Lease.LeaseKeepAlive: each request renews one
// lease and gets one answer; a lease that is gone gets a TTL of 0, as from
// etcd. Renewals are answered as they complete, up to keepAlivesInFlight at
// once, so answers to different leases may come in another order than the
// requests (clients match them by lease ID).
//
// Most streams carry one renewal (etcd's client opens a stream for each
// KeepAliveOnce), so a stream starts on the handler's goroutine alone: it
// receives, renews and answers in turn, the leader at once, a follower after
// waiting for its first renewal's answer from the leader. A stream that then
// sends another renewal the leader must answer is one that renews many
// leases, and answering those one round trip at a time would hold it back:
// it goes on with a goroutine of its own receiving (see serve). A handler
// waiting for a renewal's answer returns when the member begins to stop
// (LeaseBackend.Stopping); one waiting in Recv is cut off with its
// connection.
func (s *Lease) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ka := &keepAlive{stream: stream}
	defer ka.close()
	ctx := stream.Context()
	for {
		req, err := stream.Recv()
		if err != nil {
			select {
			case <-s.b.Stopping():
				return rpctypes.ErrGRPCStopped
			default:
				return nil // the client closed its side, or went away
			}
		}
		resp, answered, err := ka.renewHere(s.b, req)
		if err != nil {
			return err
		}
		if answered {
			continue
		}
		if ka.done != nil {
			// Not the first renewal to wait.
			return ka.serve(s.b, req.ID, resp)
		}
		ka.done = make(chan renewal, 1)
		ka.renewLater(s.b, req.ID, resp)
		select {
		case <-s.b.Stopping():
			return rpctypes.ErrGRPCStopped
		case <-ctx.Done():
			return ctx.Err()
		case r := <-ka.done:
			if err := ka.answer(r); err != nil {
				return err
			}
		}
	}
}

// renewHere starts the answer to req and, when this member can renew the
// lease at once (on the leader a renewal is a memory operation), renews it
// and sends the answer. The header is filled before the renewal, as etcd
// does: its revision is never one at which the lease was already revoked.
func (ka *keepAlive) renewHere(b LeaseBackend, req *pb.LeaseKeepAliveRequest) (resp *pb.LeaseKeepAliveResponse, answered bool, err error) {
	resp = &pb.LeaseKeepAliveResponse{Header: &pb.ResponseHeader{}, ID: req.ID}
	b.FillHeader(resp.Header)
	ttl, ok := b.LeaseRenewHere(req.ID)
	if !ok {
		return resp, false, nil
	}
	resp.TTL = ttl
	return resp, true, ka.send(resp)
}

// serve carries on a stream whose renewals wait for the leader (the first,
// already answered, went through done), starting with the renewal of lease
// id (answered with resp), with up to keepAlivesInFlight
// of them in flight: a goroutine of the stream's own receives the requests and
// answers those that complete at once itself, and this one answers the rest
// and watches for the member stopping.
func (ka *keepAlive) serve(b LeaseBackend, id int64, resp *pb.LeaseKeepAliveResponse) error {
	ka.ended = make(chan recvEnd, 1)
	ka.done = make(chan renewal, keepAlivesInFlight)
	ka.slots = make(chan struct{}, keepAlivesInFlight)
	ka.slots <- struct{}{}
	ka.renewLater(b, id, resp)
	// The receiving goroutine ends with the stream: Recv fails once the
	// handler returns, and so does the wait for a slot.
	go ka.receive(b)
	for {
		select {
		case <-b.Stopping():
			return rpctypes.ErrGRPCStopped
		case r := <-ka.done:
			if err := ka.answer(r); err != nil {
				return err
			}
		case end := <-ka.ended:
			if end.sent {
				return end.err
			}
			// The client closed its side (its renewals still get
			// their answers), or went away: either ends the stream.
			// Nothing takes a slot any more.
			for len(ka.slots) > 0 {
				select {
				case <-b.Stopping():
					return rpctypes.ErrGRPCStopped
				case <-ka.stream.Context().Done():
					return ka.stream.Context().Err() // gone: no one to answer
				case r := <-ka.done:
					if err := ka.answer(r); err != nil {
						return err
					}
				}
			}
			return nil
		}
	}
}

// keepAlive is one LeaseKeepAlive stream. done is made for its first
// renewal that waits; the rest, and done again, when it starts its receiving
// goroutine (serve).
type keepAlive struct {
	stream pb.Lease_LeaseKeepAliveServer
	// ended has the receiving goroutine's last word.
	ended chan recvEnd
	// done takes renewals that waited, as they complete: it has room for
	// every one in flight, so the callbacks never block, and no goroutine
	// per renewal waits.
	done chan renewal
	// slots holds a token per renewal in flight (taken by the receiving
	// goroutine, given back by the handler's once answered).
	slots chan struct{}

	sendMu sync.Mutex // serializes Send, which both goroutines call
	closed bool       // under sendMu: the handler returned; no more sends
}

// receive takes the stream's requests until Recv fails, answering at once the
// renewals this member can make at once and handing the rest to
// LeaseRenewLater, once a slot is free.
func (ka *keepAlive) receive(b LeaseBackend) {
	ctx := ka.stream.Context()
	for {
		req, err := ka.stream.Recv()
		if err != nil {
			ka.ended <- recvEnd{err: err}
			return
		}
		resp, answered, err := ka.renewHere(b, req)
		if err != nil {
			ka.ended <- recvEnd{err: err, sent: true}
			return
		}
		if answered {
			continue
		}
		select {
		case ka.slots <- struct{}{}:
		case <-ctx.Done():
			ka.ended <- recvEnd{err: ctx.Err()}
			return
		}
		ka.renewLater(b, req.ID, resp)
	}
}

// renewLater hands the renewal of lease id to LeaseRenewLater; its outcome
// goes to done, which has room for it (once serve runs, the renewal holds a
// slot).
func (ka *keepAlive) renewLater(b LeaseBackend, id int64, resp *pb.LeaseKeepAliveResponse) {
	b.LeaseRenewLater(ka.stream.Context(), id, func(ttl int64, err error) {
		resp.TTL = ttl
		ka.done <- renewal{resp: resp, err: err}
	})
}

// answer sends the outcome of a renewal that waited, and frees its slot if
// it held one.
func (ka *keepAlive) answer(r renewal) error {
	if ka.slots != nil {
		<-ka.slots
	}
	if errors.Is(r.err, lease.ErrNotFound) {
		r.resp.TTL, r.err = 0, nil
	}
	if r.err != nil {
		return toGRPC(r.err)
	}
	return ka.send(r.resp)
}

// send answers on the stream, unless the handler has returned.
func (ka *keepAlive) send(resp *pb.LeaseKeepAliveResponse) error {
	ka.sendMu.Lock()
	defer ka.sendMu.Unlock()
	if ka.closed {
		return errKeepAliveEnded
	}
	return ka.stream.Send(resp)
}

// close keeps the receiving goroutine from sending once the handler returns
// (gRPC forbids it); a Send already under way finishes first.
func (ka *keepAlive) close() {
	ka.sendMu.Lock()
	ka.closed = true
	ka.sendMu.Unlock()
}

var errKeepAliveEnded = errors.New("api: keep-alive stream ended")

// LeaseTimeToLive implements Lease.LeaseTimeToLive. An unknown lease is
// answered with a TTL of -1, as etcd does, not with an error.
func (s *Lease) LeaseTimeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	resp, err := s.b.LeaseTimeToLive(ctx, req)
	if errors.Is(err, lease.ErrNotFound) {
		resp, err = &pb.LeaseTimeToLiveResponse{ID: req.ID, TTL: -1}, nil
	}
	if err != nil {
		return nil, toGRPC(err)
	}
	if resp.Header == nil {
		resp.Header = &pb.ResponseHeader{}
	}
	resp.Header.Revision = 0 // this member's, not the leader's
	s.b.FillHeader(resp.Header)
	return resp, nil
}

// LeaseLeases implements Lease.LeaseLeases.
func (s *Lease) LeaseLeases(ctx context.Context, req *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	ids := s.b.LeaseIDs()
	resp := &pb.LeaseLeasesResponse{Header: &pb.ResponseHeader{}, Leases: make([]*pb.LeaseStatus, len(ids))}
	for i, id := range ids {
		resp.Leases[i] = &pb.LeaseStatus{ID: id}
	}
	s.b.FillHeader(resp.Header)
	return resp, nil
}
