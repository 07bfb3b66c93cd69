package main

import (
	"fmt"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// printer writes command answers in one --write-out format. A method returns
// an error only when the format cannot show that answer; write errors are
// kept by the outWriter.
type printer interface {
	get(r *pb.RangeResponse, shape rangeShape) error
	put(r *pb.PutResponse) error
	del(r *pb.DeleteRangeResponse) error
	txn(r *pb.TxnResponse) error
	status(s []endpointStatus) error
	health(h []endpointHealth) error
	alarm(r *pb.AlarmResponse) error
	memberList(r *pb.MemberListResponse) error
	// memberChange prints the answer to member add, remove, update or
	// promote (the simple format says which).
	memberChange(c memberChange) error
	// moveLeader prints the answer to move-leader from the leader from to
	// the member to.
	moveLeader(from, to uint64, r *pb.MoveLeaderResponse) error
}

// rangeShape is what the get flags ask of the output.
type rangeShape struct {
	valueOnly bool // --print-value-only: values only (simple format)
	countOnly bool // --count-only: the count only
}

// hexBytes writes b as \x escapes, as etcdctl --hex does.
func hexBytes(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		fmt.Fprintf(&sb, "\\x%02x", c)
	}
	return sb.String()
}

// errTableUnsupported is etcdctl's answer to -w table for commands without
// a table.
var errTableUnsupported = badFeature("table not supported as output format")

// errFieldsUnsupported is etcdctl's answer to -w fields for commands without
// a fields output.
var errFieldsUnsupported = badFeature("fields not supported as output format")
