package api

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// These checks run before a request reaches Raft, so a bad request costs no
// log entry and gets etcd's own error. They must never panic, whatever the
// bytes on the wire decoded to (see FuzzValidate).

func checkRange(r *pb.RangeRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.GetSortOrder())]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.GetSortTarget())]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

func checkPut(r *pb.PutRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if r.GetIgnoreValue() && len(r.GetValue()) != 0 {
		return rpctypes.ErrGRPCValueProvided
	}
	if r.GetIgnoreLease() && r.GetLease() != 0 {
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

func checkDelete(r *pb.DeleteRangeRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// checkTxn checks a transaction and, recursively, the ones nested in it. A
// nested transaction may use only the operations its parents left: budget is
// the limit minus the widest list above it.
func checkTxn(r *pb.TxnRequest, budget int) error {
	width := max(len(r.GetCompare()), len(r.GetSuccess()), len(r.GetFailure()))
	if width > budget {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.GetCompare() {
		if len(c.GetKey()) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.GetSuccess(), r.GetFailure()} {
		for _, op := range ops {
			if err := checkOp(op, budget-width); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkOp(op *pb.RequestOp, budget int) error {
	switch req := op.GetRequest().(type) {
	case *pb.RequestOp_RequestRange:
		return checkRange(req.RequestRange)
	case *pb.RequestOp_RequestPut:
		return checkPut(req.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		return checkDelete(req.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		return checkTxn(req.RequestTxn, budget)
	default:
		return rpctypes.ErrGRPCKeyNotFound // an empty operation, as etcd answers it
	}
}

// checkDuplicates rejects a transaction branch that could write one key
// twice: two puts of a key, or a put of a key that a delete in the same
// branch covers. Puts in the two branches of a nested transaction may share
// keys (only one branch runs); deletes may overlap freely.
func checkDuplicates(ops []*pb.RequestOp) error {
	_, _, err := collectWrites(ops)
	return err
}

// interval is a deleted range [begin, end) compared as strings, with etcd's
// reading of range ends: a single key k is [k, k+"\x00"), and an end that is
// not above begin (such as "\x00" for "from key") covers nothing.
type interval struct{ begin, end string }

func (iv interval) covers(key string) bool { return iv.begin <= key && key < iv.end }

func coveredBy(dels []interval, key string) bool {
	for _, iv := range dels {
		if iv.covers(key) {
			return true
		}
	}
	return false
}

func collectWrites(ops []*pb.RequestOp) (map[string]struct{}, []interval, error) {
	var dels []interval
	for _, op := range ops {
		d := op.GetRequestDeleteRange()
		if d == nil {
			continue
		}
		if len(d.GetRangeEnd()) == 0 {
			dels = append(dels, interval{string(d.GetKey()), string(d.GetKey()) + "\x00"})
		} else {
			dels = append(dels, interval{string(d.GetKey()), string(d.GetRangeEnd())})
		}
	}
	puts := map[string]struct{}{}
	for _, op := range ops {
		t := op.GetRequestTxn()
		if t == nil {
			continue
		}
		thenPuts, thenDels, err := collectWrites(t.GetSuccess())
		if err != nil {
			return nil, nil, err
		}
		elsePuts, elseDels, err := collectWrites(t.GetFailure())
		if err != nil {
			return nil, nil, err
		}
		for k := range thenPuts {
			if _, dup := puts[k]; dup || coveredBy(dels, k) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		for k := range elsePuts {
			if _, dup := puts[k]; dup {
				if _, fromThen := thenPuts[k]; !fromThen {
					return nil, nil, rpctypes.ErrGRPCDuplicateKey
				}
			}
			if coveredBy(dels, k) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		dels = append(dels, thenDels...)
		dels = append(dels, elseDels...)
	}
	for _, op := range ops {
		p := op.GetRequestPut()
		if p == nil {
			continue
		}
		k := string(p.GetKey())
		if _, dup := puts[k]; dup || coveredBy(dels, k) {
			return nil, nil, rpctypes.ErrGRPCDuplicateKey
		}
		puts[k] = struct{}{}
	}
	return puts, dels, nil
}
