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
	w   io.Writer
	hex bool
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
