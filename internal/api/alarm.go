package api

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Alarms in etcd are raised by the members themselves (NOSPACE when the
// database reaches its quota, CORRUPT when a hash check fails), recorded
// through Raft, and cleared by an operator with `etcdctl alarm disarm`. While
// one is active the cluster refuses writes; `etcdctl endpoint health` reports
// every endpoint unhealthy, and Maintenance.Status lists them in its errors.
//
// plinth raises no alarms yet and keeps no alarm state, so Maintenance.Alarm
// answers as etcd answers a cluster without alarms:
//
//   - GET lists the active alarms of the given type (NONE: of every type),
//     whatever the request's MemberID, as etcd does; today the list is empty.
//   - DEACTIVATE of an alarm that is not active answers an empty list and no
//     error, as etcd's applier does (v3alarm.AlarmStore.Deactivate finds
//     nothing and the response carries no alarms). This is what
//     clientv3.AlarmDisarm and `etcdctl alarm disarm` send.
//   - ACTIVATE of NONE answers an empty list, as in etcd.
//   - ACTIVATE of a real alarm, and DEACTIVATE of an active one, would change
//     state that plinth does not keep: they answer codes.Unimplemented
//     (errAlarmChange) rather than pretend. etcd's clients never send
//     ACTIVATE; the members raise alarms through their own Raft proposals.
//   - An action etcd does not define answers codes.InvalidArgument (etcd's
//     applier returns no response for it).
//
// When alarms come (NOSPACE, CORRUPT), the backend keeps them in its applied
// state and implements AlarmSource; ACTIVATE and DEACTIVATE then go through
// Propose like any other change.

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
}

// errAlarmChange answers the alarm actions that would change alarm state.
var errAlarmChange = status.Error(codes.Unimplemented, "api: plinth keeps no alarm state yet: alarms cannot be activated or deactivated")

// errAlarmAction answers an action etcd does not define.
var errAlarmAction = status.Error(codes.InvalidArgument, "api: unknown alarm action")

// Alarm implements Maintenance.Alarm. See the comment at the top of this file.
func (m *Maintenance) Alarm(ctx context.Context, req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	var active []*pb.AlarmMember
	switch req.Action {
	case pb.AlarmRequest_GET, pb.AlarmRequest_ACTIVATE, pb.AlarmRequest_DEACTIVATE:
	default:
		return nil, errAlarmAction
	}
	if m.alarms != nil {
		if err := m.alarms.ReadIndex(ctx); err != nil {
			return nil, toGRPC(err)
		}
		active = m.alarms.Alarms()
	}
	resp := &pb.AlarmResponse{Header: &pb.ResponseHeader{}}
	switch req.Action {
	case pb.AlarmRequest_GET:
		for _, a := range active {
			if req.Alarm == pb.AlarmType_NONE || a.Alarm == req.Alarm {
				resp.Alarms = append(resp.Alarms, a)
			}
		}
	case pb.AlarmRequest_ACTIVATE:
		if req.Alarm != pb.AlarmType_NONE {
			return nil, errAlarmChange
		}
	case pb.AlarmRequest_DEACTIVATE:
		for _, a := range active {
			if a.MemberID == req.MemberID && a.Alarm == req.Alarm {
				return nil, errAlarmChange
			}
		}
	}
	m.src.FillHeader(resp.Header)
	return resp, nil
}
