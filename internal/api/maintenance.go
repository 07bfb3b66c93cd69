package api

import (
	"context"
	"fmt"
	"slices"

	"github.com/coreos/go-semver/semver"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinthdb/plinth/internal/mvcc"
)

// MemberStatus is what a member reports about itself.
type MemberStatus struct {
	Version      string
	DBSize       int64
	DBSizeInUse  int64
	DBSizeQuota  int64 // the storage quota (see QuotaChecker)
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

// HashSource answers Maintenance.Hash and HashKV from the member's own
// store: no consensus round, as in etcd.
type HashSource interface {
	HashKV(rev int64) (mvcc.KVHash, error)
}

// Maintenance serves the parts of the etcd Maintenance service this member
// supports (Status, Alarm, MoveLeader, Hash, HashKV, Defragment, Snapshot,
// and Downgrade's checks); the rest answer Unimplemented.
type Maintenance struct {
	pb.UnimplementedMaintenanceServer
	src StatusSource
	// alarms is src when src keeps alarm state; nil while no backend raises
	// alarms, and then there are none (see alarm.go).
	alarms AlarmSource
	// hashes is src when it can hash its store; Hash and HashKV answer
	// Unimplemented without one.
	hashes HashSource
}

// NewMaintenance returns the Maintenance service over src. If src is also an
// AlarmSource, Alarm and Status report its alarms; if it is a HashSource,
// Hash and HashKV are served.
func NewMaintenance(src StatusSource) *Maintenance {
	m := &Maintenance{src: src}
	m.alarms, _ = src.(AlarmSource)
	m.hashes, _ = src.(HashSource)
	return m
}

// Defragmenter is a backend that can give freed space back at once.
type Defragmenter interface {
	Defragment(ctx context.Context) error
}

// Defragment implements Maintenance.Defragment (see the backend's
// Defragment for what it does in Pebble).
func (m *Maintenance) Defragment(ctx context.Context, req *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	d, ok := m.src.(Defragmenter)
	if !ok {
		return m.UnimplementedMaintenanceServer.Defragment(ctx, req)
	}
	if err := d.Defragment(ctx); err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.DefragmentResponse{Header: &pb.ResponseHeader{}}
	m.src.FillHeader(resp.Header)
	return resp, nil
}

// HashKV implements Maintenance.HashKV: the hash of the keys' versions that
// reads can reach at the revision asked (0: the current one), equal on every
// member that applied the same entries and compacted at the same revision,
// however far each one's background compaction got. Its header carries the
// member's current revision, as etcd's does.
func (m *Maintenance) HashKV(ctx context.Context, req *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	if m.hashes == nil {
		return m.UnimplementedMaintenanceServer.HashKV(ctx, req)
	}
	if req.GetRevision() < 0 {
		return nil, toGRPC(mvcc.ErrCompacted)
	}
	h, err := m.hashes.HashKV(req.GetRevision())
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.HashKVResponse{Header: &pb.ResponseHeader{}, Hash: h.Hash, CompactRevision: h.CompactRevision, HashRevision: h.Revision}
	m.src.FillHeader(resp.Header)
	return resp, nil
}

// Hash implements Maintenance.Hash, which etcd keeps for tests: plinth
// answers with the hash of its keys at the current revision (HashKV's), a
// value members that applied the same entries agree on.
func (m *Maintenance) Hash(ctx context.Context, req *pb.HashRequest) (*pb.HashResponse, error) {
	if m.hashes == nil {
		return m.UnimplementedMaintenanceServer.Hash(ctx, req)
	}
	h, err := m.hashes.HashKV(0)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.HashResponse{Header: &pb.ResponseHeader{Revision: h.Revision}, Hash: h.Hash}
	m.src.FillHeader(resp.Header)
	return resp, nil
}

// Status implements Maintenance.Status.
func (m *Maintenance) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	st := m.src.Status()
	resp := &pb.StatusResponse{
		Header:           &pb.ResponseHeader{},
		Version:          st.Version,
		DbSize:           st.DBSize,
		DbSizeInUse:      st.DBSizeInUse,
		DbSizeQuota:      st.DBSizeQuota,
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

// errNoDowngrade answers a downgrade to a version etcd would accept: plinth
// cannot hand its data directory to an older etcd, which reads only its own
// bbolt files. Moving to etcd goes through a snapshot instead.
var errNoDowngrade = status.Error(codes.FailedPrecondition,
	"etcdserver: plinth cannot be downgraded: etcd cannot read its data directory; move to etcd with etcdctl snapshot save and etcdutl snapshot restore")

// Downgrade implements Maintenance.Downgrade with etcd's checks and errors
// (a malformed version, a target other than one minor version below the
// cluster's), then refuses what etcd would do next. A downgrade never starts;
// cancelling succeeds, as etcd's does when none is in progress.
func (m *Maintenance) Downgrade(ctx context.Context, req *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	cluster, err := semver.NewVersion(m.src.Status().Version)
	if err != nil {
		return nil, rpctypes.ErrGRPCClusterVersionUnavailable
	}
	switch req.GetAction() {
	case pb.DowngradeRequest_CANCEL:
		// etcd answers with the cluster version (major.minor) and no
		// header.
		return &pb.DowngradeResponse{Version: fmt.Sprintf("%d.%d", cluster.Major, cluster.Minor)}, nil
	case pb.DowngradeRequest_VALIDATE, pb.DowngradeRequest_ENABLE:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "etcdserver: unknown downgrade action %d", req.GetAction())
	}
	target, err := downgradeTarget(req.GetVersion())
	if err != nil {
		return nil, err
	}
	if target.Major != cluster.Major || target.Minor+1 != cluster.Minor {
		return nil, rpctypes.ErrGRPCInvalidDowngradeTargetVersion
	}
	return nil, errNoDowngrade
}

// downgradeTarget parses a downgrade's target version as etcd does:
// major.minor.patch or major.minor, of which only major.minor counts.
func downgradeTarget(v string) (semver.Version, error) {
	parsed, err := semver.NewVersion(v)
	if err != nil {
		if parsed, err = semver.NewVersion(v + ".0"); err != nil {
			return semver.Version{}, rpctypes.ErrGRPCWrongDowngradeVersionFormat
		}
	}
	return semver.Version{Major: parsed.Major, Minor: parsed.Minor}, nil
}
