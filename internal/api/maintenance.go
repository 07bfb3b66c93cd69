package api

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// MemberStatus is what a member reports about itself.
type MemberStatus struct {
	Version      string
	DBSize       int64
	DBSizeInUse  int64
	Leader       uint64
	RaftIndex    uint64
	RaftTerm     uint64
	AppliedIndex uint64
	Errors       []string
}

// StatusSource answers for Maintenance.Status.
type StatusSource interface {
	Status() MemberStatus
	FillHeader(h *pb.ResponseHeader)
}

// Maintenance serves the parts of the etcd Maintenance service this member
// supports; the rest answer Unimplemented.
type Maintenance struct {
	pb.UnimplementedMaintenanceServer
	src StatusSource
}

// NewMaintenance returns the Maintenance service over src.
func NewMaintenance(src StatusSource) *Maintenance { return &Maintenance{src: src} }

// Status implements Maintenance.Status.
func (m *Maintenance) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	st := m.src.Status()
	resp := &pb.StatusResponse{
		Header:           &pb.ResponseHeader{},
		Version:          st.Version,
		DbSize:           st.DBSize,
		DbSizeInUse:      st.DBSizeInUse,
		Leader:           st.Leader,
		RaftIndex:        st.RaftIndex,
		RaftTerm:         st.RaftTerm,
		RaftAppliedIndex: st.AppliedIndex,
		Errors:           st.Errors,
		StorageVersion:   st.Version,
	}
	m.src.FillHeader(resp.Header)
	return resp, nil
}

// Member is one member as the Cluster service lists it.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

// MemberSource answers for the Cluster service.
type MemberSource interface {
	Members() []Member
	FillHeader(h *pb.ResponseHeader)
}

// Cluster serves the etcd Cluster service's read side; membership changes
// answer Unimplemented until members can join.
type Cluster struct {
	pb.UnimplementedClusterServer
	src MemberSource
}

// NewCluster returns the Cluster service over src.
func NewCluster(src MemberSource) *Cluster { return &Cluster{src: src} }

// MemberList implements Cluster.MemberList.
func (c *Cluster) MemberList(ctx context.Context, _ *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	resp := &pb.MemberListResponse{Header: &pb.ResponseHeader{}}
	for _, m := range c.src.Members() {
		resp.Members = append(resp.Members, &pb.Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner})
	}
	c.src.FillHeader(resp.Header)
	return resp, nil
}
