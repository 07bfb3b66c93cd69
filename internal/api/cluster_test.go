package api

import (
	"context"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

type oneMember struct {
	statusOnly
	reads int
}

func (o *oneMember) ReadIndex(context.Context) error { o.reads++; return nil }

func (*oneMember) AddMember(context.Context, []string, bool) (Member, error) {
	return Member{}, ErrNotLeader
}
func (*oneMember) RemoveMember(context.Context, uint64) error           { return ErrMemberNotFound }
func (*oneMember) UpdateMember(context.Context, uint64, []string) error { return ErrMemberNotFound }
func (*oneMember) PromoteMember(context.Context, uint64) error          { return ErrMemberNotLearner }

func (oneMember) Members() []Member {
	return []Member{{ID: 2, Name: "default", PeerURLs: []string{"http://127.0.0.1:2380"}, ClientURLs: []string{"http://127.0.0.1:2379"}}}
}

// TestMemberList: the members as the source lists them, under etcd's Cluster
// header (ids and term, no revision).
func TestMemberList(t *testing.T) {
	src := &oneMember{}
	resp, err := NewCluster(src).MemberList(context.Background(), &pb.MemberListRequest{Linearizable: true})
	if err != nil {
		t.Fatal(err)
	}
	if src.reads != 1 {
		t.Errorf("a linearizable member list made %d read index rounds, want 1", src.reads)
	}
	want := &pb.MemberListResponse{
		Header:  &pb.ResponseHeader{ClusterId: 1, MemberId: 2, RaftTerm: 3},
		Members: []*pb.Member{{ID: 2, Name: "default", PeerURLs: []string{"http://127.0.0.1:2380"}, ClientURLs: []string{"http://127.0.0.1:2379"}}},
	}
	if !proto.Equal(resp, want) {
		t.Errorf("MemberList = %v, want %v", resp, want)
	}
}

// TestMembershipChangeErrors: the source's errors reach the client as etcd's,
// and bad peer URLs are refused before the source sees them.
func TestMembershipChangeErrors(t *testing.T) {
	c := NewCluster(&oneMember{})
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"add without URLs", func() error { _, err := c.MemberAdd(ctx, &pb.MemberAddRequest{}); return err }, rpctypes.ErrGRPCMemberBadURLs},
		{"add with a bad URL", func() error {
			_, err := c.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"127.0.0.1:2380"}})
			return err
		}, rpctypes.ErrGRPCMemberBadURLs},
		{"update with a path", func() error {
			_, err := c.MemberUpdate(ctx, &pb.MemberUpdateRequest{ID: 1, PeerURLs: []string{"http://127.0.0.1:2380/x"}})
			return err
		}, rpctypes.ErrGRPCMemberBadURLs},
		{"add on a follower without leader", func() error {
			_, err := c.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:2380"}})
			return err
		}, rpctypes.ErrGRPCNotLeader},
		{"remove unknown", func() error { _, err := c.MemberRemove(ctx, &pb.MemberRemoveRequest{ID: 9}); return err }, rpctypes.ErrGRPCMemberNotFound},
		{"promote a voter", func() error { _, err := c.MemberPromote(ctx, &pb.MemberPromoteRequest{ID: 2}); return err }, rpctypes.ErrGRPCMemberNotLearner},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}
