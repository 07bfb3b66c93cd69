package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

// TestRangeStreamMatchesRange checks the promise of KV.RangeStream: merging
// its chunks gives Range's answer to the same request, at one revision.
func TestRangeStreamMatchesRange(t *testing.T) {
	_, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kv := pb.NewKVClient(cli.ActiveConnection())

	// Enough data for several 1 MiB chunks; every key is written in its own
	// revision, so mod and create revisions sort without ties.
	value := []byte(strings.Repeat("v", 2000))
	const keys = 1500
	for i := 0; i < keys; i++ {
		k := fmt.Sprintf("key/%04d", (i*7919)%keys)
		if _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte(k), Value: value}); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	if _, err := kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("key/0100"), RangeEnd: []byte("key/0200")}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	prefix, end := []byte("key/"), []byte("key0")
	tests := []struct {
		name string
		req  *pb.RangeRequest
	}{
		{"all", &pb.RangeRequest{Key: prefix, RangeEnd: end}},
		{"limit", &pb.RangeRequest{Key: prefix, RangeEnd: end, Limit: 700}},
		{"keys descending", &pb.RangeRequest{Key: prefix, RangeEnd: end, SortOrder: pb.RangeRequest_DESCEND}},
		{"mod descending with limit", &pb.RangeRequest{Key: prefix, RangeEnd: end, SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_DESCEND, Limit: 900}},
		{"create ascending", &pb.RangeRequest{Key: prefix, RangeEnd: end, SortTarget: pb.RangeRequest_CREATE}},
		{"past revision", &pb.RangeRequest{Key: prefix, RangeEnd: end, Revision: 1000}},
		{"past revision descending", &pb.RangeRequest{Key: prefix, RangeEnd: end, Revision: 1000, SortOrder: pb.RangeRequest_DESCEND}},
		{"filters", &pb.RangeRequest{Key: prefix, RangeEnd: end, MinModRevision: 300, MaxCreateRevision: 1200, Limit: 500}},
		{"keys only", &pb.RangeRequest{Key: prefix, RangeEnd: end, KeysOnly: true}},
		{"count only", &pb.RangeRequest{Key: prefix, RangeEnd: end, CountOnly: true}},
		{"from key", &pb.RangeRequest{Key: []byte("key/1400"), RangeEnd: []byte{0}}},
		{"one key", &pb.RangeRequest{Key: []byte("key/0005")}},
		{"serializable", &pb.RangeRequest{Key: prefix, RangeEnd: end, Serializable: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want, err := kv.Range(ctx, tc.req)
			if err != nil {
				t.Fatalf("range: %v", err)
			}
			stream, err := kv.RangeStream(ctx, tc.req)
			if err != nil {
				t.Fatalf("range stream: %v", err)
			}
			got := &pb.RangeResponse{}
			chunks, headerAt := 0, 0
			for {
				resp, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("recv: %v", err)
				}
				chunks++
				if resp.RangeResponse.Header != nil {
					headerAt = chunks
				}
				proto.Merge(got, resp.RangeResponse)
			}
			if headerAt != chunks {
				t.Fatalf("the header came on chunk %d of %d, want the last", headerAt, chunks)
			}
			if !proto.Equal(got, want) {
				t.Fatalf("merged stream differs from Range: got %d kvs count %d more %v header %v, want %d kvs count %d more %v header %v",
					len(got.Kvs), got.Count, got.More, got.Header, len(want.Kvs), want.Count, want.More, want.Header)
			}
			if size := proto.Size(want); size > 2<<20 && chunks < 2 {
				t.Fatalf("a %d-byte answer came in %d chunk(s)", size, chunks)
			}
		})
	}
	stream, err := kv.RangeStream(ctx, &pb.RangeRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if !errors.Is(err, rpctypes.ErrGRPCEmptyKey) && err.Error() != rpctypes.ErrGRPCEmptyKey.Error() {
		t.Fatalf("range stream of an empty key: %v, want %v", err, rpctypes.ErrGRPCEmptyKey)
	}
}
