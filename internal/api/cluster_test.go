package api

import (
	"context"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

type oneMember struct{ statusOnly }

func (oneMember) Members() []Member {
	return []Member{{ID: 2, Name: "default", PeerURLs: []string{"http://127.0.0.1:2380"}, ClientURLs: []string{"http://127.0.0.1:2379"}}}
}

// TestMemberList: the members as the source lists them, under etcd's Cluster
// header (ids and term, no revision).
func TestMemberList(t *testing.T) {
	resp, err := NewCluster(&oneMember{}).MemberList(context.Background(), &pb.MemberListRequest{Linearizable: true})
	if err != nil {
		t.Fatal(err)
	}
	want := &pb.MemberListResponse{
		Header:  &pb.ResponseHeader{ClusterId: 1, MemberId: 2, RaftTerm: 3},
		Members: []*pb.Member{{ID: 2, Name: "default", PeerURLs: []string{"http://127.0.0.1:2380"}, ClientURLs: []string{"http://127.0.0.1:2379"}}},
	}
	if !proto.Equal(resp, want) {
		t.Errorf("MemberList = %v, want %v", resp, want)
	}
}
