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
	IsLearner    bool
	Errors       []string
}

// StatusSource answers for Maintenance.Status.
type StatusSource interface {
	Status() MemberStatus
	// MoveLeader hands leadership from this member, the leader, to
	// member to, and returns once to leads.
	MoveLeader(ctx context.Context, to uint64) error
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
		IsLearner:        st.IsLearner,
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

// MoveLeader implements Maintenance.MoveLeader. Only the leader takes it, as
// in etcd: clients send it to the leader's endpoint.
func (m *Maintenance) MoveLeader(ctx context.Context, req *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	if err := m.src.MoveLeader(ctx, req.GetTargetID()); err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.MoveLeaderResponse{Header: &pb.ResponseHeader{}}
	m.src.FillHeader(resp.Header)
	return resp, nil
}
