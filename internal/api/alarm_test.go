package api

import (
	"context"
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// statusOnly is a backend without alarm state.
type statusOnly struct{ errs []string }

func (s *statusOnly) Status() MemberStatus { return MemberStatus{Version: "3.6.0", Errors: s.errs} }

func (s *statusOnly) MoveLeader(context.Context, uint64) error { return ErrNotLeader }

func (s *statusOnly) FillHeader(h *pb.ResponseHeader) {
	h.ClusterId, h.MemberId, h.RaftTerm = 1, 2, 3
	if h.Revision == 0 {
		h.Revision = 4
	}
}

// withAlarms is a backend that keeps alarms.
type withAlarms struct {
	statusOnly
	active  []*pb.AlarmMember
	readErr error
	reads   int
}

func (s *withAlarms) Alarms() []*pb.AlarmMember { return s.active }

// Propose applies an alarm change to the active list, as the apply loop would.
func (s *withAlarms) Propose(_ context.Context, req *pb.InternalRaftRequest) (proto.Message, error) {
	a := req.Alarm
	resp := &pb.AlarmResponse{}
	for i, m := range s.active {
		if m.MemberID == a.MemberID && m.Alarm == a.Alarm {
			if a.Action == pb.AlarmRequest_DEACTIVATE {
				s.active = append(s.active[:i:i], s.active[i+1:]...)
			}
			resp.Alarms = []*pb.AlarmMember{m}
			return resp, nil
		}
	}
	if a.Action == pb.AlarmRequest_ACTIVATE && a.Alarm != pb.AlarmType_NONE {
		m := &pb.AlarmMember{MemberID: a.MemberID, Alarm: a.Alarm}
		s.active = append(s.active, m)
		resp.Alarms = []*pb.AlarmMember{m}
	}
	return resp, nil
}

func (s *withAlarms) ReadIndex(context.Context) error {
	s.reads++
	return s.readErr
}

var wantHeader = &pb.ResponseHeader{ClusterId: 1, MemberId: 2, RaftTerm: 3, Revision: 4}

func TestAlarm(t *testing.T) {
	nospace := &pb.AlarmMember{MemberID: 2, Alarm: pb.AlarmType_NOSPACE}
	corrupt := &pb.AlarmMember{MemberID: 7, Alarm: pb.AlarmType_CORRUPT}
	both := []*pb.AlarmMember{nospace, corrupt}
	get := func(at pb.AlarmType, member uint64) *pb.AlarmRequest {
		return &pb.AlarmRequest{Action: pb.AlarmRequest_GET, Alarm: at, MemberID: member}
	}
	for _, tc := range []struct {
		name   string
		active []*pb.AlarmMember // nil: a backend without alarm state
		req    *pb.AlarmRequest
		want   []*pb.AlarmMember
		code   codes.Code // of the error; OK: no error
	}{
		{name: "list without alarm state", req: get(pb.AlarmType_NONE, 0)},
		{name: "list with no alarm", active: []*pb.AlarmMember{}, req: get(pb.AlarmType_NONE, 0)},
		{name: "list every type", active: both, req: get(pb.AlarmType_NONE, 0), want: both},
		{name: "list one type", active: both, req: get(pb.AlarmType_CORRUPT, 0), want: []*pb.AlarmMember{corrupt}},
		// etcd's GET filters by type only; MemberID is not looked at.
		{name: "list ignores the member", active: both, req: get(pb.AlarmType_NOSPACE, 99), want: []*pb.AlarmMember{nospace}},
		{name: "list a type with no alarm", active: []*pb.AlarmMember{corrupt}, req: get(pb.AlarmType_NOSPACE, 0)},

		// What clientv3.AlarmDisarm sends: etcd answers an empty list.
		{name: "deactivate without alarm state",
			req: &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: 2, Alarm: pb.AlarmType_NOSPACE}},
		{name: "deactivate an alarm that is not active", active: []*pb.AlarmMember{corrupt},
			req: &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: 2, Alarm: pb.AlarmType_CORRUPT}},
		{name: "deactivate none", req: &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE}},
		{name: "deactivate an active alarm", active: both,
			req: &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: 7, Alarm: pb.AlarmType_CORRUPT}, want: []*pb.AlarmMember{corrupt}},

		{name: "activate none", req: &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE}},
		{name: "activate none with alarm state", active: both, req: &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE}},
		{name: "activate", active: []*pb.AlarmMember{},
			req:  &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 2, Alarm: pb.AlarmType_NOSPACE},
			want: []*pb.AlarmMember{nospace}},
		{name: "activate without alarm state", req: &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 2, Alarm: pb.AlarmType_NOSPACE},
			code: codes.Unimplemented},
		{name: "unknown action", req: &pb.AlarmRequest{Action: 9}, code: codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var src StatusSource = &statusOnly{}
			if tc.active != nil {
				src = &withAlarms{active: tc.active}
			}
			resp, err := NewMaintenance(src).Alarm(context.Background(), tc.req)
			if got := status.Code(err); got != tc.code {
				t.Fatalf("Alarm(%v): error %v, want code %v", tc.req, err, tc.code)
			}
			if err != nil {
				return
			}
			want := &pb.AlarmResponse{Header: wantHeader, Alarms: tc.want}
			if !proto.Equal(resp, want) {
				t.Errorf("Alarm(%v) = %v, want %v", tc.req, resp, want)
			}
		})
	}
}

// TestAlarmReadIndex: as in etcd, where alarm requests go through Raft, a
// member that cannot confirm it is current answers with an error, not a
// possibly stale list.
func TestAlarmReadIndex(t *testing.T) {
	src := &withAlarms{readErr: ErrNoLeader}
	_, err := NewMaintenance(src).Alarm(context.Background(), &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
	if !errors.Is(err, rpctypes.ErrGRPCNoLeader) {
		t.Errorf("Alarm GET without a leader: %v, want %v", err, rpctypes.ErrGRPCNoLeader)
	}
	src.readErr = nil
	if _, err := NewMaintenance(src).Alarm(context.Background(), &pb.AlarmRequest{Action: pb.AlarmRequest_GET}); err != nil || src.reads != 2 {
		t.Errorf("Alarm GET: %v after %d reads, want no error after 2", err, src.reads)
	}
}

// TestStatusAlarms: etcd lists each active alarm among the status errors.
func TestStatusAlarms(t *testing.T) {
	nospace := &pb.AlarmMember{MemberID: 2, Alarm: pb.AlarmType_NOSPACE}
	errs := make([]string, 1, 4) // room to append: the source's array must stay untouched
	errs[0] = "etcdserver: no leader"
	src := &withAlarms{statusOnly: statusOnly{errs: errs}, active: []*pb.AlarmMember{nospace}}
	resp, err := NewMaintenance(src).Status(context.Background(), &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Errors) != 2 || resp.Errors[0] != errs[0] || resp.Errors[1] != nospace.String() {
		t.Errorf("Status errors = %q, want %q and %q", resp.Errors, errs[0], nospace.String())
	}
	if got := errs[:cap(errs)][1]; got != "" {
		t.Errorf("Status wrote %q into the source's errors", got)
	}
	resp, err = NewMaintenance(&statusOnly{}).Status(context.Background(), &pb.StatusRequest{})
	if err != nil || len(resp.Errors) != 0 {
		t.Errorf("Status without alarm state: %v, errors %q", err, resp.GetErrors())
	}
}
