package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// tablePrinter draws boxed tables for get and endpoint status; other answers
// have no table, as in etcdctl.
type tablePrinter struct {
	w   io.Writer
	hex bool
}

// get draws one row per key. etcdctl 3.7 has no table for get; this one
// shows what the simple format hides: revisions, version and lease.
func (p *tablePrinter) get(r *pb.RangeResponse, shape rangeShape) error {
	if shape.countOnly {
		writeTable(p.w, []column{{title: "COUNT"}}, [][]string{{strconv.FormatInt(r.Count, 10)}})
		return nil
	}
	cols := []column{
		{title: "KEY", left: true},
		{title: "VALUE", left: true},
		{title: "CREATE REVISION"},
		{title: "MOD REVISION"},
		{title: "VERSION"},
		{title: "LEASE"},
	}
	rows := make([][]string, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		key, value := string(kv.Key), string(kv.Value)
		if p.hex {
			key, value = hexBytes(kv.Key), hexBytes(kv.Value)
		}
		lease := ""
		if kv.Lease != 0 {
			lease = fmt.Sprintf("%x", kv.Lease)
		}
		rows = append(rows, []string{
			printable(key), printable(value),
			strconv.FormatInt(kv.CreateRevision, 10),
			strconv.FormatInt(kv.ModRevision, 10),
			strconv.FormatInt(kv.Version, 10),
			lease,
		})
	}
	writeTable(p.w, cols, rows)
	return nil
}

func (p *tablePrinter) put(*pb.PutResponse) error         { return errTableUnsupported }
func (p *tablePrinter) del(*pb.DeleteRangeResponse) error { return errTableUnsupported }
func (p *tablePrinter) txn(*pb.TxnResponse) error         { return errTableUnsupported }

func (p *tablePrinter) status(s []endpointStatus) error {
	titles, rows := statusRows(s)
	cols := make([]column, len(titles))
	for i, t := range titles {
		cols[i] = column{title: t}
	}
	writeTable(p.w, cols, rows)
	return nil
}

// statusRows are the columns of endpoint status in the table and simple
// formats (the columns of etcdctl 3.5).
func statusRows(s []endpointStatus) ([]string, [][]string) {
	titles := []string{"ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER",
		"RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX", "ERRORS"}
	var rows [][]string
	for _, e := range s {
		r := e.Status
		var id uint64
		if r.Header != nil {
			id = r.Header.MemberId
		}
		rows = append(rows, []string{
			e.Endpoint,
			fmt.Sprintf("%x", id),
			r.Version,
			byteSize(uint64(max(r.DbSize, 0))),
			strconv.FormatBool(id != 0 && r.Leader == id),
			strconv.FormatBool(r.IsLearner),
			strconv.FormatUint(r.RaftTerm, 10),
			strconv.FormatUint(r.RaftIndex, 10),
			strconv.FormatUint(r.RaftAppliedIndex, 10),
			strings.Join(r.Errors, ", "),
		})
	}
	return titles, rows
}

// printable escapes control characters and invalid UTF-8 so that a binary
// key cannot break the table's lines.
func printable(s string) string {
	q := strconv.Quote(s)
	q = q[1 : len(q)-1]
	return strings.ReplaceAll(q, `\"`, `"`)
}

func (p *tablePrinter) alarm(*pb.AlarmResponse) error   { return errTableUnsupported }
func (p *tablePrinter) memberChange(memberChange) error { return errTableUnsupported }

func (p *tablePrinter) health(h []endpointHealth) error {
	titles := []string{"ENDPOINT", "HEALTH", "TOOK", "ERROR"}
	var rows [][]string
	for _, e := range h {
		rows = append(rows, []string{e.Endpoint, strconv.FormatBool(e.Health), e.Took, e.Error})
	}
	writeTable(p.w, titleColumns(titles), rows)
	return nil
}

func (p *tablePrinter) memberList(r *pb.MemberListResponse) error {
	titles, rows := memberRows(r)
	writeTable(p.w, titleColumns(titles), rows)
	return nil
}

// titleColumns are right-aligned columns with these titles: etcdctl aligns
// every cell of its cluster tables right.
func titleColumns(titles []string) []column {
	cols := make([]column, len(titles))
	for i, t := range titles {
		cols[i] = column{title: t}
	}
	return cols
}

// memberRows are the columns of member list in the table and simple
// formats: the ID in hex, "unstarted" for a member added but never started
// (it has no name yet), URLs joined by commas.
func memberRows(r *pb.MemberListResponse) ([]string, [][]string) {
	titles := []string{"ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"}
	var rows [][]string
	for _, m := range r.Members {
		status := "started"
		if m.Name == "" {
			status = "unstarted"
		}
		rows = append(rows, []string{
			fmt.Sprintf("%x", m.ID),
			status,
			m.Name,
			strings.Join(m.PeerURLs, ","),
			strings.Join(m.ClientURLs, ","),
			strconv.FormatBool(m.IsLearner),
		})
	}
	return titles, rows
}

// moveLeader: etcdctl has no table output for move-leader.
func (p *tablePrinter) moveLeader(uint64, uint64, *pb.MoveLeaderResponse) error {
	return errTableUnsupported
}
