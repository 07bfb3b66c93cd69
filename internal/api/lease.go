package api

import (
	"context"
	"errors"

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
	// the stop.
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

// LeaseKeepAlive implements Lease.LeaseKeepAlive: each request renews one
// lease and gets one answer; a lease that is gone gets a TTL of 0, as from
// etcd. Renewals are answered as they complete, up to keepAlivesInFlight at
// once, so answers to different leases may come in another order than the
// requests (clients match them by lease ID).
func (s *Lease) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	// Recv blocks; a goroutine of the stream's own takes requests so that
	// the loop can also watch for the member stopping and for renewals
	// completing. It ends with the stream, whose context ends when this
	// method returns.
	reqs := make(chan *pb.LeaseKeepAliveRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Renewals that wait (a follower's, for the leader) complete into
	// done, which has room for every one in flight: the callbacks never
	// block, and no goroutine per renewal waits. Only this goroutine sends.
	done := make(chan renewal, keepAlivesInFlight)
	inFlight := 0
	answer := func(r renewal) error {
		inFlight--
		if errors.Is(r.err, lease.ErrNotFound) {
			r.resp.TTL, r.err = 0, nil
		}
		if r.err != nil {
			return toGRPC(r.err)
		}
		return stream.Send(r.resp)
	}
	for {
		next := reqs
		if inFlight == keepAlivesInFlight {
			next = nil // until one completes
		}
		var req *pb.LeaseKeepAliveRequest
		select {
		case <-s.b.Stopping():
			return rpctypes.ErrGRPCStopped
		case <-recvErr:
			// The client closed its side (its renewals still get
			// their answers), or went away: either ends the stream.
			for inFlight > 0 {
				select {
				case <-s.b.Stopping():
					return rpctypes.ErrGRPCStopped
				case <-ctx.Done():
					return ctx.Err() // gone: no one to answer
				case r := <-done:
					if err := answer(r); err != nil {
						return err
					}
				}
			}
			return nil
		case r := <-done:
			if err := answer(r); err != nil {
				return err
			}
			continue
		case req = <-next:
		}
		// The header is filled before the renewal, as etcd does: its
		// revision is never one at which the lease was already revoked.
		resp := &pb.LeaseKeepAliveResponse{Header: &pb.ResponseHeader{}, ID: req.ID}
		s.b.FillHeader(resp.Header)
		// On the leader a renewal is a memory operation, answered here.
		if ttl, ok := s.b.LeaseRenewHere(req.ID); ok {
			resp.TTL = ttl
			if err := stream.Send(resp); err != nil {
				return err
			}
			continue
		}
		inFlight++
		s.b.LeaseRenewLater(ctx, req.ID, func(ttl int64, err error) {
			resp.TTL = ttl
			done <- renewal{resp: resp, err: err}
		})
	}
}

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
