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
	w   io.Writer
	hex bool // member answers only: IDs as hex strings, as etcdctl --hex
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

func (p *jsonPrinter) health(h []endpointHealth) error { return p.write(h) }
func (p *jsonPrinter) alarm(r *pb.AlarmResponse) error { return p.write(r) }

func (p *jsonPrinter) memberList(r *pb.MemberListResponse) error {
	if p.hex {
		return p.write(hexMembersJSON{Header: (*hexHeader)(r.Header), Members: hexMembers(r.Members)})
	}
	return p.write(r)
}

func (p *jsonPrinter) memberChange(c memberChange) error {
	if !p.hex {
		return p.write(c.resp)
	}
	switch r := c.resp.(type) {
	case *pb.MemberAddResponse:
		return p.write(struct {
			Header  *hexHeader   `json:"header"`
			Member  *hexMember   `json:"member"`
			Members []*hexMember `json:"members"`
		}{(*hexHeader)(r.Header), (*hexMember)(r.Member), hexMembers(r.Members)})
	default:
		var members []*pb.Member
		switch r := r.(type) {
		case *pb.MemberRemoveResponse:
			members = r.Members
		case *pb.MemberUpdateResponse:
			members = r.Members
		case *pb.MemberPromoteResponse:
			members = r.Members
		}
		return p.write(hexMembersJSON{Header: (*hexHeader)(c.header()), Members: hexMembers(members)})
	}
}

// hexMembersJSON is a member answer in etcdctl's -w json --hex shape: the
// IDs of the header and of each member as hex strings.
type hexMembersJSON struct {
	Header  *hexHeader   `json:"header"`
	Members []*hexMember `json:"members"`
}

type hexHeader pb.ResponseHeader

func (h *hexHeader) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ClusterID string `json:"cluster_id"`
		MemberID  string `json:"member_id"`
		Revision  int64  `json:"revision,omitempty"`
		RaftTerm  uint64 `json:"raft_term,omitempty"`
	}{fmt.Sprintf("%x", h.ClusterId), fmt.Sprintf("%x", h.MemberId), h.Revision, h.RaftTerm})
}

type hexMember pb.Member

func (m *hexMember) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ID         string   `json:"ID"`
		Name       string   `json:"name,omitempty"`
		PeerURLs   []string `json:"peerURLs,omitempty"`
		ClientURLs []string `json:"clientURLs,omitempty"`
		IsLearner  bool     `json:"isLearner,omitempty"`
	}{fmt.Sprintf("%x", m.ID), m.Name, m.PeerURLs, m.ClientURLs, m.IsLearner})
}

func hexMembers(ms []*pb.Member) []*hexMember {
	out := make([]*hexMember, len(ms))
	for i, m := range ms {
		out[i] = (*hexMember)(m)
	}
	return out
}

func (p *jsonPrinter) moveLeader(_, _ uint64, r *pb.MoveLeaderResponse) error {
	if p.hex {
		return p.write(struct {
			Header *hexHeader `json:"header"`
		}{(*hexHeader)(r.Header)})
	}
	return p.write(r)
}
