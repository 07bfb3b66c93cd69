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
	// LeaseRenew restarts a lease's TTL and returns the TTL it was granted
	// (lease.ErrNotFound for a lease that is gone or expired).
	LeaseRenew(ctx context.Context, id int64) (int64, error)
	// LeaseRenewHere renews a lease that this member can renew at once,
	// without waiting (it keeps the leases' time and has applied the
	// lease's grant): ok is false when the renewal must go through
	// LeaseRenew instead.
	LeaseRenewHere(id int64) (ttl int64, ok bool)
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

// LeaseKeepAlive implements Lease.LeaseKeepAlive: each request renews one
// lease and gets one answer; a lease that is gone gets a TTL of 0, as from
// etcd. Renewals are answered as they complete, up to keepAlivesInFlight at
// once, so answers to different leases may come in another order than the
// requests (clients match them by lease ID).
func (s *Lease) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	var renewals sync.WaitGroup
	defer renewals.Wait() // after cancel below: renewals end with ctx
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	// Recv blocks; a goroutine of the stream's own takes requests so that
	// the loop can also watch for the member stopping. It ends with the
	// stream, whose context ends when this method returns.
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
	var sendMu sync.Mutex // serializes Send
	send := func(resp *pb.LeaseKeepAliveResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(resp)
	}
	failed := make(chan error, 1)
	fail := func(err error) {
		select {
		case failed <- err:
		default:
		}
	}
	// Renewals that wait for the leader go to workers: up to
	// keepAlivesInFlight of them, started as renewals need them and kept
	// for the stream's life, because a goroutine per renewal pays for a new
	// stack, and its growth, every time.
	work := make(chan *pb.LeaseKeepAliveResponse)
	workers := 0
	stopWorkers := sync.OnceFunc(func() { close(work) })
	defer stopWorkers() // first of the deferred calls: workers end, then renewals.Wait returns
	worker := func() {
		defer renewals.Done()
		for resp := range work {
			ttl, err := s.b.LeaseRenew(ctx, resp.ID)
			if errors.Is(err, lease.ErrNotFound) {
				ttl, err = 0, nil
			}
			if err != nil {
				fail(toGRPC(err))
				continue
			}
			resp.TTL = ttl
			if err := send(resp); err != nil {
				fail(err)
			}
		}
	}
	for {
		var req *pb.LeaseKeepAliveRequest
		select {
		case <-s.b.Stopping():
			return rpctypes.ErrGRPCStopped
		case <-recvErr:
			// The client closed its side (its renewals still get
			// their answers), or went away: either ends the stream.
			stopWorkers()
			renewals.Wait()
			return nil
		case err := <-failed:
			return err
		case req = <-reqs:
		}
		// The header is filled before the renewal, as etcd does: its
		// revision is never one at which the lease was already revoked.
		resp := &pb.LeaseKeepAliveResponse{Header: &pb.ResponseHeader{}, ID: req.ID}
		s.b.FillHeader(resp.Header)
		// On the leader a renewal is a memory operation, answered here.
		if ttl, ok := s.b.LeaseRenewHere(req.ID); ok {
			resp.TTL = ttl
			if err := send(resp); err != nil {
				return err
			}
			continue
		}
		if workers < keepAlivesInFlight {
			select {
			case work <- resp: // an idle worker took it
				continue
			default:
			}
			workers++
			renewals.Add(1)
			go worker()
		}
		select {
		case work <- resp:
		case err := <-failed:
			return err
		case <-ctx.Done():
			return nil
		}
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
