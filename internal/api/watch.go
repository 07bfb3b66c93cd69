package api

import (
	"context"
	"errors"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/plinthdb/plinth/internal/watch"
)

// Watch serves the etcd Watch service from the member's watch hub.
type Watch struct {
	pb.UnimplementedWatchServer
	b   Backend
	hub *watch.Hub
}

// NewWatch returns the Watch service over hub.
func NewWatch(b Backend, hub *watch.Hub) *Watch { return &Watch{b: b, hub: hub} }

// Watch implements Watch.Watch: one goroutine receives the client's
// requests and hands them to the stream, which the handler's goroutine runs.
func (s *Watch) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
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
