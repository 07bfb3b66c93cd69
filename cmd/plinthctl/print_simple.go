package main

import (
	"fmt"
	"io"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// simplePrinter writes etcdctl's simple format: keys and values on lines of
// their own, raw (or \x-escaped with --hex), "OK" for a put, the count for a
// delete.
type simplePrinter struct {
	w      io.Writer
	errOut io.Writer // endpoint health writes the unhealthy endpoints here
	hex    bool
}

func (p *simplePrinter) bytes(b []byte) string {
	if p.hex {
		return hexBytes(b)
	}
	return string(b)
}

func (p *simplePrinter) kv(kv *mvccpb.KeyValue, valueOnly bool) {
	if !valueOnly {
		fmt.Fprintln(p.w, p.bytes(kv.Key))
	}
	fmt.Fprintln(p.w, p.bytes(kv.Value))
}

func (p *simplePrinter) get(r *pb.RangeResponse, shape rangeShape) error {
	if shape.countOnly {
		// etcdctl refuses --count-only here; the count alone is what one
		// asks for.
		fmt.Fprintln(p.w, r.Count)
		return nil
	}
	for _, kv := range r.Kvs {
		p.kv(kv, shape.valueOnly)
	}
	return nil
}

func (p *simplePrinter) put(r *pb.PutResponse) error {
	fmt.Fprintln(p.w, "OK")
	if r.PrevKv != nil {
		p.kv(r.PrevKv, false)
	}
	return nil
}

func (p *simplePrinter) del(r *pb.DeleteRangeResponse) error {
	fmt.Fprintln(p.w, r.Deleted)
	for _, kv := range r.PrevKvs {
		p.kv(kv, false)
	}
	return nil
}

// txn writes SUCCESS or FAILURE, then each response after a blank line.
func (p *simplePrinter) txn(r *pb.TxnResponse) error {
	if r.Succeeded {
		fmt.Fprintln(p.w, "SUCCESS")
	} else {
		fmt.Fprintln(p.w, "FAILURE")
	}
	for _, op := range r.Responses {
		fmt.Fprintln(p.w)
		switch v := op.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			_ = p.get(v.ResponseRange, rangeShape{})
		case *pb.ResponseOp_ResponsePut:
			_ = p.put(v.ResponsePut)
		case *pb.ResponseOp_ResponseDeleteRange:
			_ = p.del(v.ResponseDeleteRange)
		default:
			fmt.Fprintf(p.w, "unexpected response %T\n", v)
		}
	}
	return nil
}

// status writes one line per endpoint with the columns of the table.
func (p *simplePrinter) status(s []endpointStatus) error {
	_, rows := statusRows(s)
	for _, row := range rows {
		fmt.Fprintln(p.w, strings.Join(row, ", "))
	}
	return nil
}

// health writes a line per endpoint: healthy ones on stdout, unhealthy ones
// on stderr, as etcdctl does.
func (p *simplePrinter) health(hs []endpointHealth) error {
	for _, h := range hs {
		if h.Error == "" {
			fmt.Fprintf(p.w, "%s is healthy: successfully committed proposal: took = %v\n", h.Endpoint, h.Took)
		} else {
			fmt.Fprintf(p.errOut, "%s is unhealthy: failed to commit proposal: %v\n", h.Endpoint, h.Error)
		}
	}
	return nil
}

// alarm writes each alarm in the protobuf text form, as etcdctl's %+v does.
func (p *simplePrinter) alarm(r *pb.AlarmResponse) error {
	for _, a := range r.Alarms {
		fmt.Fprintf(p.w, "%+v\n", a)
	}
	return nil
}

// memberList writes one line per member with the columns of the table.
func (p *simplePrinter) memberList(r *pb.MemberListResponse) error {
	_, rows := memberRows(r)
	for _, row := range rows {
		fmt.Fprintln(p.w, strings.Join(row, ", "))
	}
	return nil
}

func (p *simplePrinter) memberChange(c memberChange) error {
	cluster := c.header().GetClusterId()
	switch r := c.resp.(type) {
	case *pb.MemberAddResponse:
		as := " "
		if r.GetMember().GetIsLearner() {
			as = " as learner "
		}
		fmt.Fprintf(p.w, "Member %16x added%sto cluster %16x\n", r.GetMember().GetID(), as, cluster)
		// The environment of the new member's first start.
		var initial []string
		for _, m := range r.Members {
			name := m.Name
			if m.ID == r.GetMember().GetID() {
				name = c.name
			}
			for _, u := range m.PeerURLs {
				initial = append(initial, name+"="+u)
			}
		}
		fmt.Fprintln(p.w)
		fmt.Fprintf(p.w, "ETCD_NAME=%q\n", c.name)
		fmt.Fprintf(p.w, "ETCD_INITIAL_CLUSTER=%q\n", strings.Join(initial, ","))
		fmt.Fprintf(p.w, "ETCD_INITIAL_ADVERTISE_PEER_URLS=%q\n", c.peerURLs)
		fmt.Fprintln(p.w, `ETCD_INITIAL_CLUSTER_STATE="existing"`)
	case *pb.MemberRemoveResponse:
		fmt.Fprintf(p.w, "Member %16x removed from cluster %16x\n", c.id, cluster)
	case *pb.MemberUpdateResponse:
		fmt.Fprintf(p.w, "Member %16x updated in cluster %16x\n", c.id, cluster)
	case *pb.MemberPromoteResponse:
		fmt.Fprintf(p.w, "Member %16x promoted in cluster %16x\n", c.id, cluster)
	}
	return nil
}

func (p *simplePrinter) moveLeader(from, to uint64, _ *pb.MoveLeaderResponse) error {
	fmt.Fprintf(p.w, "Leadership transferred from %x to %x\n", from, to)
	return nil
}
