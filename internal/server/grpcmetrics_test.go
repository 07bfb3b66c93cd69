package server

import (
	"context"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// TestGRPCMetricsCostNoAllocation checks that counting a unary request
// allocates nothing: the series are found in a map made at start.
func TestGRPCMetricsCostNoAllocation(t *testing.T) {
	srv := grpc.NewServer()
	pb.RegisterKVServer(srv, pb.UnimplementedKVServer{})
	g := newGRPCMetrics()
	g.register(srv)
	info := &grpc.UnaryServerInfo{FullMethod: "/etcdserverpb.KV/Put"}
	resp := &pb.PutResponse{}
	handler := func(context.Context, any) (any, error) { return resp, nil }
	ctx, req := context.Background(), &pb.PutRequest{}
	if _, ok := g.methods[info.FullMethod]; !ok {
		t.Fatalf("no series for %s", info.FullMethod)
	}
	allocs := testing.AllocsPerRun(1000, func() { _, _ = g.unary(ctx, req, info, handler) })
	if allocs != 0 {
		t.Fatalf("counting a request allocates %v times", allocs)
	}
}
