package api

import (
	"context"
	"errors"
	"net/url"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Errors of membership changes, with etcd's equivalents.
var (
	ErrMemberNotFound   = errors.New("api: member not found")
	ErrPeerURLExist     = errors.New("api: peer URL already used by a member")
	ErrMemberNotLearner = errors.New("api: member is not a learner")
	ErrLearnerNotReady  = errors.New("api: learner is not in sync with the leader")
	ErrTooManyLearners  = errors.New("api: too many learners")
	ErrNotEnoughStarted = errors.New("api: not enough started members")
	ErrUnhealthy        = errors.New("api: the change would leave the cluster without an active quorum")
)

// Member is one member as the Cluster service lists it.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

func (m Member) proto() *pb.Member {
	return &pb.Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner}
}

// MemberSource answers for the Cluster service. Each change returns once it
// is applied on this member, so that Members then includes it.
type MemberSource interface {
	Members() []Member
	AddMember(ctx context.Context, peerURLs []string, learner bool) (Member, error)
	RemoveMember(ctx context.Context, id uint64) error
	UpdateMember(ctx context.Context, id uint64, peerURLs []string) error
	PromoteMember(ctx context.Context, id uint64) error
	// ReadIndex returns once this member has applied everything
	// committed when it was called.
	ReadIndex(ctx context.Context) error
	FillHeader(h *pb.ResponseHeader)
}

// Cluster serves the etcd Cluster service.
type Cluster struct {
	pb.UnimplementedClusterServer
	src MemberSource
}

// NewCluster returns the Cluster service over src.
func NewCluster(src MemberSource) *Cluster { return &Cluster{src: src} }

// MemberList implements Cluster.MemberList.
func (c *Cluster) MemberList(ctx context.Context, req *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	if req.GetLinearizable() {
		if err := c.src.ReadIndex(ctx); err != nil {
			return nil, toGRPC(err)
		}
	}
	resp := &pb.MemberListResponse{Header: &pb.ResponseHeader{}, Members: c.members()}
	c.fillHeader(resp.Header)
	return resp, nil
}

// fillHeader fills a Cluster response's header as etcd's Cluster service
// does: the member's identity and term only, no revision.
func (c *Cluster) fillHeader(h *pb.ResponseHeader) {
	c.src.FillHeader(h)
	h.Revision = 0
}

func (c *Cluster) members() []*pb.Member {
	var out []*pb.Member
	for _, m := range c.src.Members() {
		out = append(out, m.proto())
	}
	return out
}

// MemberAdd implements Cluster.MemberAdd.
func (c *Cluster) MemberAdd(ctx context.Context, req *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	if err := checkPeerURLs(req.GetPeerURLs()); err != nil {
		return nil, err
	}
	m, err := c.src.AddMember(ctx, req.GetPeerURLs(), req.GetIsLearner())
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MemberAddResponse{Header: &pb.ResponseHeader{}, Member: m.proto(), Members: c.members()}
	c.fillHeader(resp.Header)
	return resp, nil
}

// MemberRemove implements Cluster.MemberRemove.
func (c *Cluster) MemberRemove(ctx context.Context, req *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	if err := c.src.RemoveMember(ctx, req.GetID()); err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MemberRemoveResponse{Header: &pb.ResponseHeader{}, Members: c.members()}
	c.fillHeader(resp.Header)
	return resp, nil
}

// MemberUpdate implements Cluster.MemberUpdate.
func (c *Cluster) MemberUpdate(ctx context.Context, req *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	if err := checkPeerURLs(req.GetPeerURLs()); err != nil {
		return nil, err
	}
	if err := c.src.UpdateMember(ctx, req.GetID(), req.GetPeerURLs()); err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MemberUpdateResponse{Header: &pb.ResponseHeader{}, Members: c.members()}
	c.fillHeader(resp.Header)
	return resp, nil
}

// MemberPromote implements Cluster.MemberPromote.
func (c *Cluster) MemberPromote(ctx context.Context, req *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	if err := c.src.PromoteMember(ctx, req.GetID()); err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MemberPromoteResponse{Header: &pb.ResponseHeader{}, Members: c.members()}
	c.fillHeader(resp.Header)
	return resp, nil
}

// checkPeerURLs accepts what etcd accepts: one or more http(s)://host:port
// URLs without a path.
func checkPeerURLs(urls []string) error {
	if len(urls) == 0 {
		return rpctypes.ErrGRPCMemberBadURLs
	}
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			return rpctypes.ErrGRPCMemberBadURLs
		}
	}
	return nil
}
