package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"
)

// Keep-alive streams are held open by clients between renewals, and their
// handlers wait in Recv, where the member's stopping cannot reach them: the
// graceful stop would wait its whole grace period for them. So each gets a
// context that also ends when the member begins to stop, made by the gRPC
// tap below; gRPC's Recv and Send wait on that context.

const keepAliveMethod = "/etcdserverpb.Lease/LeaseKeepAlive"

// releaseKey keys the function that undoes a stream's registration with the
// stop (see endAtStop).
type releaseKey struct{}

// endAtStop is the server's tap: a keep-alive stream's context ends when its
// own does or when the member begins to stop, whichever is first.
func (s *Server) endAtStop(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != keepAliveMethod {
		return ctx, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	release := context.AfterFunc(s.stoppingCtx, cancel)
	return context.WithValue(ctx, releaseKey{}, release), nil
}

// releaseAtEnd is the outermost stream interceptor: once a stream's handler
// returns, endAtStop's registration goes, so that the stop's list of streams
// holds only open ones.
func releaseAtEnd(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	if release, ok := ss.Context().Value(releaseKey{}).(func() bool); ok {
		release()
	}
	return err
}
