package compat

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// opTimeout bounds one request to one server. A server that does not answer
// in time shows up as a DeadlineExceeded outcome, compared like any other.
const opTimeout = 20 * time.Second

// op is one request of the KV service. Exactly one field is set.
type op struct {
	put     *pb.PutRequest
	rng     *pb.RangeRequest
	del     *pb.DeleteRangeRequest
	txn     *pb.TxnRequest
	compact *pb.CompactionRequest
}

func (o op) kind() string {
	switch {
	case o.put != nil:
		return "Put"
	case o.rng != nil:
		return "Range"
	case o.del != nil:
		return "DeleteRange"
	case o.txn != nil:
		return "Txn"
	case o.compact != nil:
		return "Compact"
	}
	panic("compat: empty op")
}

func (o op) request() proto.Message {
	switch {
	case o.put != nil:
		return o.put
	case o.rng != nil:
		return o.rng
	case o.del != nil:
		return o.del
	case o.txn != nil:
		return o.txn
	case o.compact != nil:
		return o.compact
	}
	panic("compat: empty op")
}

func (o op) send(ctx context.Context, kv pb.KVClient) (proto.Message, error) {
	switch {
	case o.put != nil:
		return kv.Put(ctx, o.put)
	case o.rng != nil:
		return kv.Range(ctx, o.rng)
	case o.del != nil:
		return kv.DeleteRange(ctx, o.del)
	case o.txn != nil:
		return kv.Txn(ctx, o.txn)
	case o.compact != nil:
		return kv.Compact(ctx, o.compact)
	}
	panic("compat: empty op")
}

// outcome is one server's answer to one op: a response or a gRPC status.
type outcome struct {
	resp proto.Message // nil when err is set
	err  *status.Status
}

func (p *pair) exec(o op) (ref, tgt outcome) {
	var wg sync.WaitGroup
	call := func(s *server, out *outcome) {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		resp, err := o.send(ctx, s.kv)
		if err != nil {
			out.err = status.Convert(err)
			return
		}
		out.resp = resp
	}
	wg.Add(2)
	go call(p.ref, &ref)
	go call(p.tgt, &tgt)
	wg.Wait()
	return ref, tgt
}

// run sends o to both servers and compares the answers. It returns the
// reference's answer (for the generator to follow the store's state) and,
// on any difference, a report that says what differs; "" when they agree.
func (p *pair) run(o op) (outcome, string) {
	ref, tgt := p.exec(o)
	return ref, p.compare(o, ref, tgt)
}

// compare normalises both answers (copies; the originals are untouched) and
// reports every difference, or "" when there is none.
func (p *pair) compare(o op, ref, tgt outcome) string {
	var problems []string
	nref, probs := normalise(p.ref, o, ref)
	problems = append(problems, probs...)
	ntgt, probs := normalise(p.tgt, o, tgt)
	problems = append(problems, probs...)
	if len(problems) == 0 && sameOutcome(nref, ntgt) {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s request:\n%s\n", o.kind(), indent(render(o.request())))
	for _, pr := range problems {
		fmt.Fprintf(&b, "header problem: %s\n", pr)
	}
	refText, tgtText := renderOutcome(nref), renderOutcome(ntgt)
	if refText != tgtText {
		fmt.Fprintf(&b, "diff (- %s, + %s):\n%s", p.ref.name, p.tgt.name, lineDiff(refText, tgtText))
	} else if !sameOutcome(nref, ntgt) {
		b.WriteString("the answers differ in a way their text does not show (field presence or unknown fields)\n")
	}
	fmt.Fprintf(&b, "%s answered:\n%s\n", p.ref.name, indent(clip(refText, 150)))
	fmt.Fprintf(&b, "%s answered:\n%s\n", p.tgt.name, indent(clip(tgtText, 150)))
	b.WriteString("(header cluster_id and member_id are normalised: non-zero and stable shows as 1; raft_term non-zero shows as 1)\n")
	return b.String()
}

func sameOutcome(a, b outcome) bool {
	if (a.err == nil) != (b.err == nil) {
		return false
	}
	if a.err != nil {
		return a.err.Code() == b.err.Code() && a.err.Message() == b.err.Message()
	}
	return proto.Equal(a.resp, b.resp)
}

// normalise returns a copy of out with only what must differ between two
// clusters made equal, and the header problems found on the way:
//
//   - header.cluster_id and header.member_id: the top-level header must carry
//     non-zero ids, the same for the whole run; any header that carries an id
//     must carry that one. Non-zero ids become 1, so that a header with ids
//     and one without still differ.
//   - header.raft_term: the top-level header must carry a non-zero term. A
//     non-zero term becomes 1.
//   - kv.lease in the answer to a keys_only range: etcd 3.7 leaves a key's
//     lease out of a keys_only answer (on its fast path) while plinth keeps
//     it, as etcd 3.6 does (DESIGN.md, "Semantics to copy exactly"). The lease
//     is zeroed on both sides for keys_only ranges, top-level and in txns,
//     and nowhere else.
//
// Everything else (revisions, kvs, counts, more, prev_kvs, deleted, txn
// results and nested headers, errors) is left as it is and compared exactly.
func normalise(s *server, o op, out outcome) (outcome, []string) {
	if out.err != nil {
		return out, nil
	}
	resp := proto.Clone(out.resp)
	var problems []string
	headerOf := func(m proto.Message) *pb.ResponseHeader {
		switch r := m.(type) {
		case *pb.RangeResponse:
			return r.Header
		case *pb.PutResponse:
			return r.Header
		case *pb.DeleteRangeResponse:
			return r.Header
		case *pb.TxnResponse:
			return r.Header
		case *pb.CompactionResponse:
			return r.Header
		}
		return nil
	}
	top := headerOf(resp)
	if top == nil {
		problems = append(problems, s.name+": response has no header")
	} else {
		problems = append(problems, s.checkHeader(top, true)...)
	}
	if t, ok := resp.(*pb.TxnResponse); ok {
		walkTxnHeaders(t, func(h *pb.ResponseHeader) {
			problems = append(problems, s.checkHeader(h, false)...)
		})
	}
	switch r := resp.(type) {
	case *pb.RangeResponse:
		clearKeysOnlyLease(o.rng, r)
	case *pb.TxnResponse:
		clearKeysOnlyLeaseTxn(o.txn, r)
	}
	return outcome{resp: resp}, problems
}

// checkHeader checks and normalises one header in place. top says whether it
// is the response's own header (which must carry ids and a term) or one
// nested in a txn response.
func (s *server) checkHeader(h *pb.ResponseHeader, top bool) []string {
	if h == nil {
		return nil // a nil nested header is compared, not normalised
	}
	var problems []string
	id := func(field string, got uint64, stable *uint64) uint64 {
		switch {
		case got == 0:
			if top {
				problems = append(problems, fmt.Sprintf("%s: header.%s is 0", s.name, field))
			}
			return 0
		case *stable == 0:
			*stable = got
		case *stable != got:
			problems = append(problems, fmt.Sprintf("%s: header.%s changed from %d to %d", s.name, field, *stable, got))
		}
		return 1
	}
	h.ClusterId = id("cluster_id", h.ClusterId, &s.clusterID)
	h.MemberId = id("member_id", h.MemberId, &s.memberID)
	if h.RaftTerm != 0 {
		h.RaftTerm = 1
	} else if top {
		problems = append(problems, fmt.Sprintf("%s: header.raft_term is 0", s.name))
	}
	return problems
}

func walkTxnHeaders(t *pb.TxnResponse, f func(*pb.ResponseHeader)) {
	for _, r := range t.Responses {
		switch v := r.GetResponse().(type) {
		case *pb.ResponseOp_ResponseRange:
			f(v.ResponseRange.GetHeader())
		case *pb.ResponseOp_ResponsePut:
			f(v.ResponsePut.GetHeader())
		case *pb.ResponseOp_ResponseDeleteRange:
			f(v.ResponseDeleteRange.GetHeader())
		case *pb.ResponseOp_ResponseTxn:
			if v.ResponseTxn != nil {
				f(v.ResponseTxn.Header)
				walkTxnHeaders(v.ResponseTxn, f)
			}
		}
	}
}

func clearKeysOnlyLease(req *pb.RangeRequest, resp *pb.RangeResponse) {
	if req == nil || resp == nil || !req.KeysOnly {
		return
	}
	for _, kv := range resp.Kvs {
		if kv != nil {
			kv.Lease = 0
		}
	}
}

// clearKeysOnlyLeaseTxn follows the branch the response says was taken and
// applies clearKeysOnlyLease to each range in it, where request and response
// line up (where they do not, the difference is reported anyway).
func clearKeysOnlyLeaseTxn(req *pb.TxnRequest, resp *pb.TxnResponse) {
	if req == nil || resp == nil {
		return
	}
	branch := req.Failure
	if resp.Succeeded {
		branch = req.Success
	}
	for i, r := range resp.Responses {
		if i >= len(branch) {
			return
		}
		switch v := r.GetResponse().(type) {
		case *pb.ResponseOp_ResponseRange:
			clearKeysOnlyLease(branch[i].GetRequestRange(), v.ResponseRange)
		case *pb.ResponseOp_ResponseTxn:
			clearKeysOnlyLeaseTxn(branch[i].GetRequestTxn(), v.ResponseTxn)
		}
	}
}

// render prints a message as multi-line text proto, with long bytes fields
// cut short so that a 1.5 MiB value does not drown the report.
func render(m proto.Message) string {
	m = proto.Clone(m)
	shortenBytes(m.ProtoReflect())
	return prototext.MarshalOptions{Multiline: true, Indent: "  ", EmitUnknown: true}.Format(m)
}

// oneLine is render on a single line, for traces.
func oneLine(m proto.Message) string {
	m = proto.Clone(m)
	shortenBytes(m.ProtoReflect())
	return prototext.MarshalOptions{EmitUnknown: true}.Format(m)
}

func oneLineOutcome(o outcome) string {
	if o.err != nil {
		return fmt.Sprintf("error: code=%s message=%q", o.err.Code(), o.err.Message())
	}
	return oneLine(o.resp)
}

func renderOutcome(o outcome) string {
	if o.err != nil {
		return fmt.Sprintf("error: code=%s message=%q", o.err.Code(), o.err.Message())
	}
	if o.resp == nil {
		return "<no response>"
	}
	return render(o.resp)
}

const maxShownBytes = 64

func shortenBytes(m protoreflect.Message) {
	type cut struct {
		fd protoreflect.FieldDescriptor
		v  []byte
	}
	var cuts []cut // set after Range: a message must not change while ranged over
	defer func() {
		for _, c := range cuts {
			m.Set(c.fd, protoreflect.ValueOfBytes(c.v))
		}
	}()
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				shortenBytes(l.Get(i).Message())
			}
		case fd.IsMap():
		case fd.Message() != nil:
			shortenBytes(v.Message())
		case fd.Kind() == protoreflect.BytesKind && !fd.IsList():
			if b := v.Bytes(); len(b) > maxShownBytes {
				short := fmt.Sprintf("%s...(%d bytes in all)", b[:maxShownBytes/2], len(b))
				cuts = append(cuts, cut{fd, []byte(short)})
			}
		}
		return true
	})
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    <empty>"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func clip(s string, maxLines int) string {
	lines := strings.Split(s, "\n")
	if len(lines) <= maxLines {
		return s
	}
	return strings.Join(lines[:maxLines], "\n") + fmt.Sprintf("\n... (%d more lines)", len(lines)-maxLines)
}

// lineDiff returns a line diff of a and b (longest common subsequence),
// with up to 3 lines of context around each change.
func lineDiff(a, b string) string {
	x := strings.Split(strings.TrimRight(a, "\n"), "\n")
	y := strings.Split(strings.TrimRight(b, "\n"), "\n")
	n, m := len(x), len(y)
	// lcs[i][j] = length of the LCS of x[i:] and y[j:].
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type line struct {
		mark byte
		text string
	}
	var lines []line
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && x[i] == y[j]:
			lines = append(lines, line{' ', x[i]})
			i++
			j++
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			lines = append(lines, line{'-', x[i]})
			i++
		default:
			lines = append(lines, line{'+', y[j]})
			j++
		}
	}
	const context = 3
	var out strings.Builder
	lastShown := -1
	for k, l := range lines {
		near := false
		for d := -context; d <= context; d++ {
			if k+d >= 0 && k+d < len(lines) && lines[k+d].mark != ' ' {
				near = true
				break
			}
		}
		if !near {
			continue
		}
		if lastShown >= 0 && k > lastShown+1 {
			out.WriteString("    ...\n")
		}
		fmt.Fprintf(&out, "  %c %s\n", l.mark, l.text)
		lastShown = k
	}
	return out.String()
}
