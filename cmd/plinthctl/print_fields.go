package main

import (
	"fmt"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// fieldsPrinter writes etcdctl's fields format: one `"Name" : value` line per
// field, for scripts that grep. --hex prints IDs in hexadecimal.
type fieldsPrinter struct {
	w   io.Writer
	hex bool
}

func (p *fieldsPrinter) id(name string, v uint64) {
	if p.hex {
		fmt.Fprintf(p.w, "%q : %x\n", name, v)
	} else {
		fmt.Fprintf(p.w, "%q : %d\n", name, v)
	}
}

func (p *fieldsPrinter) header(h *pb.ResponseHeader) {
	if h == nil {
		h = &pb.ResponseHeader{}
	}
	p.id("ClusterID", h.ClusterId)
	p.id("MemberID", h.MemberId)
	// As etcdctl: answers outside the KV service may carry no revision,
	// and then the line is left out.
	if h.Revision > 0 {
		fmt.Fprintf(p.w, "\"Revision\" : %d\n", h.Revision)
	}
	fmt.Fprintf(p.w, "\"RaftTerm\" : %d\n", h.RaftTerm)
}

func (p *fieldsPrinter) kv(prefix string, kv *mvccpb.KeyValue) {
	fmt.Fprintf(p.w, "\"%sKey\" : %q\n", prefix, kv.Key)
	fmt.Fprintf(p.w, "\"%sCreateRevision\" : %d\n", prefix, kv.CreateRevision)
	fmt.Fprintf(p.w, "\"%sModRevision\" : %d\n", prefix, kv.ModRevision)
	fmt.Fprintf(p.w, "\"%sVersion\" : %d\n", prefix, kv.Version)
	fmt.Fprintf(p.w, "\"%sValue\" : %q\n", prefix, kv.Value)
	if p.hex {
		fmt.Fprintf(p.w, "\"%sLease\" : %016x\n", prefix, kv.Lease)
	} else {
		fmt.Fprintf(p.w, "\"%sLease\" : %d\n", prefix, kv.Lease)
	}
}

func (p *fieldsPrinter) get(r *pb.RangeResponse, _ rangeShape) error {
	p.header(r.Header)
	for _, kv := range r.Kvs {
		p.kv("", kv)
	}
	fmt.Fprintf(p.w, "\"More\" : %v\n", r.More)
	fmt.Fprintf(p.w, "\"Count\" : %d\n", r.Count)
	return nil
}

func (p *fieldsPrinter) put(r *pb.PutResponse) error {
	p.header(r.Header)
	if r.PrevKv != nil {
		p.kv("Prev", r.PrevKv)
	}
	return nil
}

func (p *fieldsPrinter) del(r *pb.DeleteRangeResponse) error {
	p.header(r.Header)
	fmt.Fprintf(p.w, "\"Deleted\" : %d\n", r.Deleted)
	for _, kv := range r.PrevKvs {
		p.kv("Prev", kv)
	}
	return nil
}

func (p *fieldsPrinter) txn(r *pb.TxnResponse) error {
	p.header(r.Header)
	fmt.Fprintf(p.w, "\"Succeeded\" : %v\n", r.Succeeded)
	for _, op := range r.Responses {
		switch v := op.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			_ = p.get(v.ResponseRange, rangeShape{})
		case *pb.ResponseOp_ResponsePut:
			_ = p.put(v.ResponsePut)
		case *pb.ResponseOp_ResponseDeleteRange:
			_ = p.del(v.ResponseDeleteRange)
		}
	}
	return nil
}

func (p *fieldsPrinter) status(s []endpointStatus) error {
	for _, e := range s {
		r := e.Status
		p.header(r.Header)
		fmt.Fprintf(p.w, "\"Version\" : %q\n", r.Version)
		fmt.Fprintf(p.w, "\"StorageVersion\" : %q\n", r.StorageVersion)
		fmt.Fprintf(p.w, "\"DBSize\" : %d\n", r.DbSize)
		fmt.Fprintf(p.w, "\"DBSizeInUse\" : %d\n", r.DbSizeInUse)
		fmt.Fprintf(p.w, "\"DBSizeQuota\" : %d\n", r.DbSizeQuota)
		p.id("Leader", r.Leader)
		fmt.Fprintf(p.w, "\"IsLearner\" : %v\n", r.IsLearner)
		fmt.Fprintf(p.w, "\"RaftIndex\" : %d\n", r.RaftIndex)
		fmt.Fprintf(p.w, "\"RaftAppliedIndex\" : %d\n", r.RaftAppliedIndex)
		fmt.Fprintf(p.w, "\"Errors\" : %v\n", r.Errors)
		fmt.Fprintf(p.w, "\"Endpoint\" : %q\n", e.Endpoint)
		fmt.Fprintf(p.w, "\"DowngradeTargetVersion\" : %q\n", r.GetDowngradeInfo().GetTargetVersion())
		fmt.Fprintf(p.w, "\"DowngradeEnabled\" : %v\n", r.GetDowngradeInfo().GetEnabled())
		fmt.Fprintln(p.w)
	}
	return nil
}

func (p *fieldsPrinter) health(hs []endpointHealth) error {
	for _, h := range hs {
		fmt.Fprintf(p.w, "\"Endpoint\" : %q\n", h.Endpoint)
		fmt.Fprintf(p.w, "\"Health\" : %v\n", h.Health)
		fmt.Fprintf(p.w, "\"Took\" : %s\n", h.Took)
		fmt.Fprintf(p.w, "\"Error\" : %s\n", h.Error)
		fmt.Fprintln(p.w)
	}
	return nil
}

func (p *fieldsPrinter) alarm(r *pb.AlarmResponse) error {
	p.header(r.Header)
	for _, a := range r.Alarms {
		p.id("MemberID", a.MemberID)
		fmt.Fprintf(p.w, "\"AlarmType\" : %v\n", a.Alarm)
		fmt.Fprintln(p.w)
	}
	return nil
}

func (p *fieldsPrinter) memberList(r *pb.MemberListResponse) error {
	p.header(r.Header)
	for _, m := range r.Members {
		p.id("ID", m.ID)
		fmt.Fprintf(p.w, "\"Name\" : %q\n", m.Name)
		for _, u := range m.PeerURLs {
			fmt.Fprintf(p.w, "\"PeerURL\" : %q\n", u)
		}
		for _, u := range m.ClientURLs {
			fmt.Fprintf(p.w, "\"ClientURL\" : %q\n", u)
		}
		fmt.Fprintf(p.w, "\"IsLearner\" : %v\n", m.IsLearner)
		fmt.Fprintln(p.w)
	}
	return nil
}

// memberChange: etcdctl has no fields output for membership changes.
func (p *fieldsPrinter) memberChange(memberChange) error { return errFieldsUnsupported }

// moveLeader: etcdctl has no fields output for move-leader.
func (p *fieldsPrinter) moveLeader(uint64, uint64, *pb.MoveLeaderResponse) error {
	return errFieldsUnsupported
}
