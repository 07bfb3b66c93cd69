package api

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Alarms in etcd are raised by the members themselves (NOSPACE when the
// database reaches its quota, CORRUPT when a hash check fails), recorded
// through Raft, and cleared by an operator with `etcdctl alarm disarm`. While
// one is active the cluster refuses some requests (package apply says
// which), and Maintenance.Status lists them in its errors.
//
// Maintenance.Alarm answers as etcd's:
//
//   - GET lists the active alarms of the given type (NONE: of every type),
//     whatever the request's MemberID, as etcd does, once a read index
//     confirms the member is current.
//   - ACTIVATE and DEACTIVATE go through the log (Propose) and answer with
//     the alarm activated, or the alarm removed (none when it was not
//     active: what `etcdctl alarm disarm` gets for an alarm gone already).
//     ACTIVATE of NONE changes nothing.
//   - An action etcd does not define answers codes.InvalidArgument (etcd's
//     applier returns no response for it).
//
// A backend without alarm state (no AlarmSource) answers as a cluster with
// no alarms, and refuses to activate one (codes.Unimplemented).

// AlarmSource is what Maintenance.Alarm needs from a backend that keeps alarm
// state.
type AlarmSource interface {
	// Alarms returns the active alarms as of the last applied entry, in a
	// stable order. The caller does not modify them.
	Alarms() []*pb.AlarmMember
	// ReadIndex returns once a read of the local state is linearizable. etcd
	// serves every Alarm request through Raft, so a GET on a member cut off
	// from its leader fails instead of answering a stale list.
	ReadIndex(ctx context.Context) error
	// Propose replicates req through Raft and returns its applied answer.
	Propose(ctx context.Context, req *pb.InternalRaftRequest) (proto.Message, error)
}

// errAlarmChange answers the alarm actions that would change alarm state on a
// backend that keeps none.
var errAlarmChange = status.Error(codes.Unimplemented, "api: this backend keeps no alarm state: alarms cannot be activated or deactivated")

// errAlarmAction answers an action etcd does not define.
var errAlarmAction = status.Error(codes.InvalidArgument, "api: unknown alarm action")

// Alarm implements Maintenance.Alarm. See the comment at the top of this file.
func (m *Maintenance) Alarm(ctx context.Context, req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	switch req.Action {
	case pb.AlarmRequest_GET, pb.AlarmRequest_ACTIVATE, pb.AlarmRequest_DEACTIVATE:
	default:
		return nil, errAlarmAction
	}
	resp := &pb.AlarmResponse{Header: &pb.ResponseHeader{}}
	switch {
	case m.alarms == nil:
		if req.Action == pb.AlarmRequest_ACTIVATE && req.Alarm != pb.AlarmType_NONE {
			return nil, errAlarmChange
		}
	case req.Action == pb.AlarmRequest_GET:
		if err := m.alarms.ReadIndex(ctx); err != nil {
			return nil, toGRPC(err)
		}
		for _, a := range m.alarms.Alarms() {
			if req.Alarm == pb.AlarmType_NONE || a.Alarm == req.Alarm {
				resp.Alarms = append(resp.Alarms, a)
			}
		}
	default:
		r, err := m.alarms.Propose(ctx, &pb.InternalRaftRequest{Alarm: req})
		if err != nil {
			return nil, toGRPC(err)
		}
		applied, ok := r.(*pb.AlarmResponse)
		if !ok {
			return nil, status.Errorf(codes.Internal, "api: alarm answered with %T", r)
		}
		resp.Alarms = applied.Alarms
	}
	m.src.FillHeader(resp.Header)
	return resp, nil
}
