package server

import (
	"context"
	"errors"
	"fmt"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/plinthdb/plinth/internal/lease"
)

// The renewal service is plinth's own, beside the etcd API on the client
// URLs: a follower's keep-alives travel to the leader over one stream of it,
// in batches (see leaseForwarder). Over etcd's keep-alive stream each renewal
// would be a message of its own both ways, which cost the follower and the
// leader more than the client's keep-alive itself.
//
// Its messages are etcd's LeaseCheckpointRequest, which is a list of lease
// IDs with a TTL each: a request lists the leases to renew (TTLs unset), and
// its answer, one per request, the same leases in the same order with the
// TTL each was renewed for (0 for a lease the leader does not have).
const (
	renewalService = "plinth.internal.LeaseRenewals"
	renewalMethod  = "/" + renewalService + "/Renew"
)

var renewalServiceDesc = grpc.ServiceDesc{
	ServiceName: renewalService,
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Renew",
		Handler:       func(srv any, stream grpc.ServerStream) error { return srv.(*Server).serveRenewals(stream) },
		ServerStreams: true,
		ClientStreams: true,
	}},
	Metadata: "plinth/internal/server/leaserenewals.go",
}

// renewalClientDesc describes the stream to its client (the server's
// description holds the handler, which reaches the client's code in turn).
var renewalClientDesc = grpc.StreamDesc{StreamName: "Renew", ServerStreams: true, ClientStreams: true}

// serveRenewals answers a follower's batches of renewals, in order. A
// renewal this member cannot answer at once (it no longer leads, or has not
// applied the lease's grant yet) waits as a keep-alive reaching it would.
func (s *Server) serveRenewals(stream grpc.ServerStream) error {
	ctx := stream.Context()
	for {
		req := &pb.LeaseCheckpointRequest{}
		if err := stream.RecvMsg(req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		resp := newRenewalMessage(len(req.Checkpoints))
		for i, r := range req.Checkpoints {
			ttl, err := s.LeaseRenew(ctx, r.ID)
			if errors.Is(err, lease.ErrNotFound) {
				ttl, err = 0, nil
			}
			if err != nil {
				return fmt.Errorf("renew lease %x for a follower: %w", r.ID, err)
			}
			resp.Checkpoints[i].ID, resp.Checkpoints[i].Remaining_TTL = r.ID, ttl
		}
		if err := stream.SendMsg(resp); err != nil {
			return err
		}
	}
}

// renewals is the client side of the renewal service.
type renewals struct{ stream grpc.ClientStream }

func openRenewals(ctx context.Context, conn *grpc.ClientConn) (renewalStream, error) {
	stream, err := conn.NewStream(ctx, &renewalClientDesc, renewalMethod)
	if err != nil {
		return nil, err
	}
	return renewals{stream}, nil
}

func (r renewals) send(ids []int64) error {
	req := newRenewalMessage(len(ids))
	for i, id := range ids {
		req.Checkpoints[i].ID = id
	}
	return r.stream.SendMsg(req)
}

// newRenewalMessage returns a message of the renewal service with n leases,
// zero, allocated together.
func newRenewalMessage(n int) *pb.LeaseCheckpointRequest {
	leases := make([]pb.LeaseCheckpoint, n)
	m := &pb.LeaseCheckpointRequest{Checkpoints: make([]*pb.LeaseCheckpoint, n)}
	for i := range leases {
		m.Checkpoints[i] = &leases[i]
	}
	return m
}

func (r renewals) recv() ([]*pb.LeaseCheckpoint, error) {
	resp := &pb.LeaseCheckpointRequest{}
	if err := r.stream.RecvMsg(resp); err != nil {
		return nil, err
	}
	return resp.Checkpoints, nil
}

// etcdKeepAlives carries renewals over etcd's keep-alive stream, one message
// each: to a leader that does not serve the renewal service.
type etcdKeepAlives struct{ stream pb.Lease_LeaseKeepAliveClient }

func openEtcdKeepAlives(ctx context.Context, conn *grpc.ClientConn) (renewalStream, error) {
	stream, err := pb.NewLeaseClient(conn).LeaseKeepAlive(ctx)
	if err != nil {
		return nil, err
	}
	return etcdKeepAlives{stream}, nil
}

func (e etcdKeepAlives) send(ids []int64) error {
	for _, id := range ids {
		if err := e.stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
			return err
		}
	}
	return nil
}

func (e etcdKeepAlives) recv() ([]*pb.LeaseCheckpoint, error) {
	resp, err := e.stream.Recv()
	if err != nil {
		return nil, err
	}
	return []*pb.LeaseCheckpoint{{ID: resp.ID, Remaining_TTL: resp.TTL}}, nil
}
