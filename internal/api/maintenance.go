package api

import (
	"context"
	"slices"

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
// supports (Status, Alarm); the rest answer Unimplemented.
type Maintenance struct {
	pb.UnimplementedMaintenanceServer
	src StatusSource
	// alarms is src when src keeps alarm state; nil while no backend raises
	// alarms, and then there are none (see alarm.go).
	alarms AlarmSource
}

// NewMaintenance returns the Maintenance service over src. If src is also an
// AlarmSource, Alarm and Status report its alarms.
func NewMaintenance(src StatusSource) *Maintenance {
	m := &Maintenance{src: src}
	m.alarms, _ = src.(AlarmSource)
	return m
}

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
		Errors:           slices.Clip(st.Errors), // appends below must not reach the source's array
		StorageVersion:   st.Version,
	}
	if m.alarms != nil {
		// As etcd: each active alarm is an error of the member's status.
		for _, a := range m.alarms.Alarms() {
			resp.Errors = append(resp.Errors, a.String())
		}
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
		resp.Members = append(resp.Members, &pb.Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs})
	}
	c.src.FillHeader(resp.Header)
	// etcd's Cluster service answers with the member's identity and term
	// only: its headers carry no revision.
	resp.Header.Revision = 0
	return resp, nil
}
