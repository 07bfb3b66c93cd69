package main

import (
	"encoding/json"
	"fmt"
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// jsonPrinter writes the protobuf answer as etcdctl -w json does: the
// generated Go structs through encoding/json, so field names are the proto
// names (snake_case, or camelCase where the proto says so), byte fields are
// base64, integers are JSON numbers and zero fields are left out. One line
// per answer.
type jsonPrinter struct {
	w io.Writer
}

func (p *jsonPrinter) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("json output: %w", err)
	}
	fmt.Fprintln(p.w, string(b))
	return nil
}

func (p *jsonPrinter) get(r *pb.RangeResponse, _ rangeShape) error { return p.write(r) }
func (p *jsonPrinter) put(r *pb.PutResponse) error                 { return p.write(r) }
func (p *jsonPrinter) del(r *pb.DeleteRangeResponse) error         { return p.write(r) }
func (p *jsonPrinter) txn(r *pb.TxnResponse) error                 { return p.write(txnToJSON(r)) }
func (p *jsonPrinter) status(s []endpointStatus) error             { return p.write(s) }

// txnJSON is a TxnResponse in etcdctl's JSON shape. The generated oneof
// wrapper of ResponseOp has no json tags, so encoding/json alone would write
// {"Response":{"ResponsePut":...}}; etcdctl writes the proto field names:
// {"Response":{"response_put":...}}.
type txnJSON struct {
	Header    *pb.ResponseHeader `json:"header,omitempty"`
	Succeeded bool               `json:"succeeded,omitempty"`
	Responses []responseOpJSON   `json:"responses,omitempty"`
}

type responseOpJSON struct {
	Response responseJSON `json:"Response"`
}

type responseJSON struct {
	Range       *pb.RangeResponse       `json:"response_range,omitempty"`
	Put         *pb.PutResponse         `json:"response_put,omitempty"`
	DeleteRange *pb.DeleteRangeResponse `json:"response_delete_range,omitempty"`
	Txn         *txnJSON                `json:"response_txn,omitempty"`
}

func txnToJSON(r *pb.TxnResponse) *txnJSON {
	t := &txnJSON{Header: r.Header, Succeeded: r.Succeeded}
	for _, op := range r.Responses {
		var j responseJSON
		switch v := op.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			j.Range = v.ResponseRange
		case *pb.ResponseOp_ResponsePut:
			j.Put = v.ResponsePut
		case *pb.ResponseOp_ResponseDeleteRange:
			j.DeleteRange = v.ResponseDeleteRange
		case *pb.ResponseOp_ResponseTxn:
			j.Txn = txnToJSON(v.ResponseTxn)
		}
		t.Responses = append(t.Responses, responseOpJSON{Response: j})
	}
	return t
}
