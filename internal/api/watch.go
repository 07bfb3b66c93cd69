package api

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/metadata"

	"github.com/plinthdb/plinth/internal/watch"
)

// Watch serves the etcd Watch service from the member's watch hub.
type Watch struct {
	pb.UnimplementedWatchServer
	b   Backend
	hub *watch.Hub
	// leader returns the member's leader, 0 for none; electionTimeout
	// paces the check of streams that require one.
	leader          func() uint64
	electionTimeout time.Duration
}

// NewWatch returns the Watch service over hub.
func NewWatch(b Backend, hub *watch.Hub, leader func() uint64, electionTimeout time.Duration) *Watch {
	return &Watch{b: b, hub: hub, leader: leader, electionTimeout: electionTimeout}
}

// noLeaderChecks is how many checks, an election timeout apart, must find
// no leader before a stream that requires one ends (etcd's count).
const noLeaderChecks = 3

// requiresLeader reports whether the client asked, with etcd's metadata
// (clientv3.WithRequireLeader), that its streams end when the member has
// no leader: otherwise a watcher on a partitioned member would wait for
// events that never come.
func requiresLeader(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}
	vs := md.Get(rpctypes.MetadataRequireLeaderKey)
	return len(vs) > 0 && vs[0] == rpctypes.MetadataHasLeader
}

// monitorLeader cancels the stream once the member has had no leader for
// noLeaderChecks checks in a row, and records why in lost.
func (s *Watch) monitorLeader(ctx context.Context, cancel context.CancelFunc, lost *atomic.Bool) {
	tick := time.NewTicker(s.electionTimeout)
	defer tick.Stop()
	missed := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if s.leader() != 0 {
			missed = 0
			continue
		}
		if missed++; missed >= noLeaderChecks {
			lost.Store(true)
			cancel()
			return
		}
	}
}

// Watch implements Watch.Watch: one goroutine receives the client's
// requests and hands them to the stream, which the handler's goroutine runs.
func (s *Watch) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var leaderLost atomic.Bool
	if requiresLeader(ctx) {
		if s.leader() == 0 {
			return rpctypes.ErrGRPCNoLeader
		}
		go s.monitorLeader(ctx, cancel, &leaderLost)
	}
	ws := s.hub.NewStream()
	defer ws.Close()
	recvErr := make(chan error, 1)
	go func() {
		defer cancel()
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case ws.Requests() <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	err := ws.Run(ctx, func(resp *pb.WatchResponse) error {
		// The stream chose the revision, 0 included (a compacted
		// watcher's cancel carries none in etcd).
		rev := resp.Header.Revision
		s.b.FillHeader(resp.Header)
		resp.Header.Revision = rev
		return stream.Send(resp)
	})
	if leaderLost.Load() {
		return rpctypes.ErrGRPCNoLeader
	}
	select {
	case rerr := <-recvErr:
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		return rerr
	default:
	}
	if errors.Is(err, watch.ErrStopped) {
		return rpctypes.ErrGRPCStopped
	}
	return toGRPC(err)
}
