package api

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

func rangeOp(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key), RangeEnd: []byte(end)}}}
}

func putOp(key string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte("v")}}}
}

func delOp(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end)}}}
}

func txnOp(then, els []*pb.RequestOp) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: then, Failure: els}}}
}

func nOps(n int, op func(i int) *pb.RequestOp) []*pb.RequestOp {
	out := make([]*pb.RequestOp, n)
	for i := range out {
		out[i] = op(i)
	}
	return out
}

func nPuts(n int) []*pb.RequestOp {
	return nOps(n, func(i int) *pb.RequestOp { return putOp(string(rune('a'+i%26)) + string(rune(i))) })
}

func nCmps(n int) []*pb.Compare {
	out := make([]*pb.Compare, n)
	for i := range out {
		out[i] = &pb.Compare{Key: []byte("k")}
	}
	return out
}

// withNested returns width ops, the first of which is the nested txn.
func withNested(width int, nested *pb.TxnRequest) []*pb.RequestOp {
	ops := nPuts(width)
	ops[0] = &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: nested}}
	return ops
}

// TestCheckTxn checks etcd v3.6's checkTxnRequest: at most MaxTxnOps in each
// list, a nested txn limited by what its parents left, non-empty keys, and
// the per-request checks inside.
func TestCheckTxn(t *testing.T) {
	cases := []struct {
		name string
		req  *pb.TxnRequest
		err  error
	}{
		{"empty", &pb.TxnRequest{}, nil},
		{"128 puts", &pb.TxnRequest{Success: nPuts(128)}, nil},
		{"129 puts", &pb.TxnRequest{Success: nPuts(129)}, rpctypes.ErrGRPCTooManyOps},
		{"129 failure ops", &pb.TxnRequest{Failure: nPuts(129)}, rpctypes.ErrGRPCTooManyOps},
		{"128 compares", &pb.TxnRequest{Compare: nCmps(128), Success: nPuts(128), Failure: nPuts(128)}, nil},
		{"129 compares", &pb.TxnRequest{Compare: nCmps(129)}, rpctypes.ErrGRPCTooManyOps},
		{"lists are limited separately, not summed", &pb.TxnRequest{Compare: nCmps(100), Success: nPuts(100), Failure: nPuts(100)}, nil},
		{"nested within budget", &pb.TxnRequest{Success: withNested(100, &pb.TxnRequest{Success: nPuts(28)})}, nil},
		{"nested over budget", &pb.TxnRequest{Success: withNested(100, &pb.TxnRequest{Success: nPuts(29)})}, rpctypes.ErrGRPCTooManyOps},
		{"nested budget uses the widest parent list", &pb.TxnRequest{Compare: nCmps(120), Success: withNested(2, &pb.TxnRequest{Failure: nPuts(9)})}, rpctypes.ErrGRPCTooManyOps},
		{"nested in failure branch over budget", &pb.TxnRequest{Failure: withNested(64, &pb.TxnRequest{Compare: nCmps(65)})}, rpctypes.ErrGRPCTooManyOps},
		{"two levels within budget", &pb.TxnRequest{Success: withNested(64, &pb.TxnRequest{Success: withNested(32, &pb.TxnRequest{Success: nPuts(32)})})}, nil},
		{"two levels over budget", &pb.TxnRequest{Success: withNested(64, &pb.TxnRequest{Success: withNested(32, &pb.TxnRequest{Success: nPuts(33)})})}, rpctypes.ErrGRPCTooManyOps},
		{"sibling nested txns each get the same budget", &pb.TxnRequest{Success: []*pb.RequestOp{
			txnOp(nPuts(126), nil), txnOp(nil, nPuts(126)),
		}}, nil},
		{"empty compare key", &pb.TxnRequest{Compare: []*pb.Compare{{Key: nil}}}, rpctypes.ErrGRPCEmptyKey},
		{"empty nested compare key", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Compare: []*pb.Compare{{}}}}}}}, rpctypes.ErrGRPCEmptyKey},
		{"too many ops wins over empty key", &pb.TxnRequest{Compare: append(nCmps(128), &pb.Compare{})}, rpctypes.ErrGRPCTooManyOps},
		{"empty range key", &pb.TxnRequest{Success: []*pb.RequestOp{rangeOp("", "")}}, rpctypes.ErrGRPCEmptyKey},
		{"empty put key", &pb.TxnRequest{Success: []*pb.RequestOp{putOp("")}}, rpctypes.ErrGRPCEmptyKey},
		{"empty delete key", &pb.TxnRequest{Failure: []*pb.RequestOp{delOp("", "x")}}, rpctypes.ErrGRPCEmptyKey},
		{"empty op", &pb.TxnRequest{Success: []*pb.RequestOp{{}}}, rpctypes.ErrGRPCKeyNotFound},
		{"nil op", &pb.TxnRequest{Success: []*pb.RequestOp{nil}}, rpctypes.ErrGRPCKeyNotFound},
		{"put with ignore_value and a value", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("k"), Value: []byte("v"), IgnoreValue: true}}}}}, rpctypes.ErrGRPCValueProvided},
		{"put with ignore_lease and a lease", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("k"), Lease: 1, IgnoreLease: true}}}}}, rpctypes.ErrGRPCLeaseProvided},
		{"range with a bad sort order", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k"), SortOrder: 3}}}}}, rpctypes.ErrGRPCInvalidSortOption},
		{"range with a bad sort target", &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k"), SortTarget: -1}}}}}, rpctypes.ErrGRPCInvalidSortOption},
		{"valid mix", &pb.TxnRequest{Compare: nCmps(2), Success: []*pb.RequestOp{rangeOp("a", "\x00"), putOp("b"), delOp("c", "d"), txnOp([]*pb.RequestOp{putOp("e")}, nil)}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := checkTxn(c.req, MaxTxnOps); err != c.err {
				t.Fatalf("checkTxn: %v, want %v", err, c.err)
			}
		})
	}
}

func TestCheckRequests(t *testing.T) {
	cases := []struct {
		name string
		err  error
		got  error
	}{
		{"range", nil, checkRange(&pb.RangeRequest{Key: []byte("k")})},
		{"range all sorts", nil, checkRange(&pb.RangeRequest{Key: []byte("k"), SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_VALUE})},
		{"range empty key", rpctypes.ErrGRPCEmptyKey, checkRange(&pb.RangeRequest{RangeEnd: []byte("x")})},
		{"range bad order", rpctypes.ErrGRPCInvalidSortOption, checkRange(&pb.RangeRequest{Key: []byte("k"), SortOrder: 7})},
		{"range bad target", rpctypes.ErrGRPCInvalidSortOption, checkRange(&pb.RangeRequest{Key: []byte("k"), SortTarget: 5})},
		{"put", nil, checkPut(&pb.PutRequest{Key: []byte("k")})},
		{"put ignore_value without value", nil, checkPut(&pb.PutRequest{Key: []byte("k"), IgnoreValue: true})},
		{"put ignore_lease without lease", nil, checkPut(&pb.PutRequest{Key: []byte("k"), IgnoreLease: true})},
		{"put empty key", rpctypes.ErrGRPCEmptyKey, checkPut(&pb.PutRequest{Value: []byte("v")})},
		{"put ignore_value with value", rpctypes.ErrGRPCValueProvided, checkPut(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), IgnoreValue: true})},
		{"put ignore_lease with lease", rpctypes.ErrGRPCLeaseProvided, checkPut(&pb.PutRequest{Key: []byte("k"), Lease: 5, IgnoreLease: true})},
		{"delete", nil, checkDelete(&pb.DeleteRangeRequest{Key: []byte("k")})},
		{"delete empty key", rpctypes.ErrGRPCEmptyKey, checkDelete(&pb.DeleteRangeRequest{RangeEnd: []byte("\x00")})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.got != c.err {
				t.Fatalf("got %v, want %v", c.got, c.err)
			}
		})
	}
}

// TestCheckDuplicates checks etcd v3.6's checkIntervals, case by case.
func TestCheckDuplicates(t *testing.T) {
	dup := rpctypes.ErrGRPCDuplicateKey
	ops := func(o ...*pb.RequestOp) []*pb.RequestOp { return o }
	cases := []struct {
		name string
		ops  []*pb.RequestOp
		err  error
	}{
		{"empty", nil, nil},
		{"distinct puts", ops(putOp("a"), putOp("b")), nil},
		{"put put", ops(putOp("a"), putOp("b"), putOp("a")), dup},
		{"put then delete of it", ops(putOp("a"), delOp("a", "")), dup},
		{"delete then put", ops(delOp("a", ""), putOp("a")), dup},
		{"put inside a deleted range", ops(delOp("a", "c"), putOp("b")), dup},
		{"put at a deleted range's start", ops(delOp("a", "c"), putOp("a")), dup},
		{"put at a deleted range's end", ops(delOp("a", "c"), putOp("c")), nil},
		{"put before a deleted range", ops(delOp("b", "c"), putOp("a")), nil},
		{"single delete does not cover the key's successor", ops(delOp("a", ""), putOp("a\x00")), nil},
		{"delete up to the successor covers the key", ops(delOp("a", "a\x00"), putOp("a")), dup},
		{"prefix delete covers 0xff keys", ops(delOp("a", "b"), putOp("a\xff\xff")), dup},
		// etcd reads "\x00" as an interval end below its start: it covers nothing.
		{"from-key delete covers no put", ops(delOp("a", "\x00"), putOp("b")), nil},
		{"reversed range covers nothing", ops(delOp("c", "a"), putOp("b")), nil},
		{"deletes may overlap", ops(delOp("a", ""), delOp("a", ""), delOp("a", "c"), delOp("b", "d")), nil},
		{"ranges are ignored", ops(rangeOp("a", ""), putOp("a"), rangeOp("a", "z")), nil},
		{"then and else may put the same key", ops(txnOp(ops(putOp("a")), ops(putOp("a")))), nil},
		{"nested put and parent put", ops(putOp("a"), txnOp(ops(putOp("a")), nil)), dup},
		{"nested else put and parent put", ops(txnOp(nil, ops(putOp("a"))), putOp("a")), dup},
		{"nested put under parent delete", ops(delOp("a", "c"), txnOp(ops(putOp("b")), nil)), dup},
		{"nested else put under parent delete", ops(delOp("a", ""), txnOp(nil, ops(putOp("a")))), dup},
		{"nested delete over parent put", ops(txnOp(ops(delOp("a", "")), nil), putOp("a")), dup},
		{"nested else delete over parent put", ops(putOp("a"), txnOp(nil, ops(delOp("a", "b")))), dup},
		{"sibling txns put the same key", ops(txnOp(ops(putOp("a")), nil), txnOp(nil, ops(putOp("a")))), dup},
		{"sibling txns then/then", ops(txnOp(ops(putOp("a")), nil), txnOp(ops(putOp("a")), nil)), dup},
		{"sibling else then else", ops(txnOp(ops(putOp("x")), ops(putOp("a"))), txnOp(ops(putOp("y")), ops(putOp("a")))), dup},
		{"earlier sibling delete covers a later sibling put", ops(txnOp(ops(delOp("a", "")), nil), txnOp(ops(putOp("a")), nil)), dup},
		// etcd checks a sibling's puts only against the deletes seen before it.
		{"later sibling delete over an earlier sibling put", ops(txnOp(ops(putOp("a")), nil), txnOp(ops(delOp("a", "")), nil)), nil},
		{"delete in then, put in else", ops(txnOp(ops(delOp("a", "")), ops(putOp("a")))), nil},
		{"duplicate inside a nested branch", ops(txnOp(ops(putOp("a"), putOp("a")), nil)), dup},
		{"put over delete inside a nested branch", ops(txnOp(nil, ops(delOp("a", "z"), putOp("q")))), dup},
		{"deep nesting and parent put", ops(txnOp(ops(txnOp(nil, ops(txnOp(ops(putOp("deep")), nil)))), nil), putOp("deep")), dup},
		{"deep nesting under parent delete", ops(delOp("d", "e"), txnOp(ops(txnOp(ops(putOp("deep")), nil)), nil)), dup},
		{"deep nesting, distinct keys", ops(putOp("a"), txnOp(ops(txnOp(ops(putOp("b")), ops(putOp("b")))), ops(putOp("c")))), nil},
		{"empty op and nil op", ops(&pb.RequestOp{}, nil, putOp("a")), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := checkDuplicates(c.ops); err != c.err {
				t.Fatalf("checkDuplicates: %v, want %v", err, c.err)
			}
		})
	}
}

var validateErrors = []error{
	rpctypes.ErrGRPCEmptyKey, rpctypes.ErrGRPCTooManyOps, rpctypes.ErrGRPCDuplicateKey, rpctypes.ErrGRPCKeyNotFound,
	rpctypes.ErrGRPCValueProvided, rpctypes.ErrGRPCLeaseProvided, rpctypes.ErrGRPCInvalidSortOption,
}

func isValidateError(err error) bool {
	if err == nil {
		return true
	}
	for _, e := range validateErrors {
		if err == e {
			return true
		}
	}
	return false
}

// FuzzValidate decodes arbitrary bytes as requests: validation must never
// panic, and must answer nil or one of etcd's request errors.
func FuzzValidate(f *testing.F) {
	seeds := []proto.Message{
		&pb.TxnRequest{},
		&pb.TxnRequest{Compare: nCmps(2), Success: []*pb.RequestOp{rangeOp("a", "\x00"), putOp("b"), delOp("c", "d"), txnOp([]*pb.RequestOp{putOp("e")}, []*pb.RequestOp{putOp("e")})}},
		&pb.TxnRequest{Success: []*pb.RequestOp{delOp("a", "c"), putOp("b")}},
		&pb.TxnRequest{Success: []*pb.RequestOp{txnOp([]*pb.RequestOp{txnOp(nil, []*pb.RequestOp{putOp("x")})}, nil), putOp("x")}},
		&pb.TxnRequest{Success: nPuts(129)},
		&pb.TxnRequest{Success: withNested(100, &pb.TxnRequest{Success: nPuts(29)})},
		&pb.TxnRequest{Success: []*pb.RequestOp{{}}},
		&pb.TxnRequest{Compare: []*pb.Compare{{}}},
		&pb.RangeRequest{Key: []byte("k"), SortOrder: 9, SortTarget: 2, Limit: -1},
		&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), IgnoreValue: true, Lease: 3, IgnoreLease: true},
		&pb.DeleteRangeRequest{Key: []byte("k"), RangeEnd: []byte("\x00"), PrevKv: true},
	}
	for _, m := range seeds {
		data, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{0x12, 0x02, 0x22, 0x00}) // a txn op holding an empty nested txn
	f.Add([]byte{0xff, 0xff})

	f.Fuzz(func(t *testing.T, data []byte) {
		var txn pb.TxnRequest
		if proto.Unmarshal(data, &txn) == nil {
			if err := checkTxn(&txn, MaxTxnOps); !isValidateError(err) {
				t.Fatalf("checkTxn: unexpected error %v", err)
			}
			for _, ops := range [][]*pb.RequestOp{txn.Success, txn.Failure} {
				if err := checkDuplicates(ops); err != nil && err != rpctypes.ErrGRPCDuplicateKey {
					t.Fatalf("checkDuplicates: unexpected error %v", err)
				}
			}
			if err := checkTxn(&txn, 1); !isValidateError(err) {
				t.Fatalf("checkTxn with budget 1: unexpected error %v", err)
			}
		}
		var rr pb.RangeRequest
		if proto.Unmarshal(data, &rr) == nil {
			if err := checkRange(&rr); !isValidateError(err) {
				t.Fatalf("checkRange: unexpected error %v", err)
			}
		}
		var pr pb.PutRequest
		if proto.Unmarshal(data, &pr) == nil {
			if err := checkPut(&pr); !isValidateError(err) {
				t.Fatalf("checkPut: unexpected error %v", err)
			}
		}
		var dr pb.DeleteRangeRequest
		if proto.Unmarshal(data, &dr) == nil {
			if err := checkDelete(&dr); !isValidateError(err) {
				t.Fatalf("checkDelete: unexpected error %v", err)
			}
		}
	})
}
