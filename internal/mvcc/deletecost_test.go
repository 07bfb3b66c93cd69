package mvcc

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// A delete that would stage more than the store's bound is refused whole,
// as a request error that changes nothing; one under it goes through. First
// versions count with their values (they are copied into history), later
// ones without.
func TestDeleteTooLarge(t *testing.T) {
	ts := newTestStore(t)
	value := strings.Repeat("v", 200)
	for i := range 20 {
		ts.put(fmt.Sprintf("k%02d", i), value)
	}
	// Each first version costs 4*3+80+200 = 292 bytes.
	ts.s.maxDeleteBytes = 10 * 292
	rev := ts.s.Rev()

	deleteRange := func(key, end string) error {
		var err error
		ts.commit(func(b *Batch) {
			_, err = b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end)})
		})
		return err
	}
	if err := deleteRange("k", "l"); !errors.Is(err, ErrDeleteTooLarge) {
		t.Fatalf("delete of 20 first versions over a bound of 10: %v, want ErrDeleteTooLarge", err)
	}
	if got := ts.s.Rev(); got != rev {
		t.Fatalf("refused delete moved the revision to %d from %d", got, rev)
	}
	if kv := ts.get("k00", 0); kv == nil || string(kv.Value) != value {
		t.Fatalf("k00 after the refused delete: %v", kv)
	}

	// Every key's second version costs 92 bytes: all 20 fit.
	for i := range 20 {
		ts.put(fmt.Sprintf("k%02d", i), value)
	}
	if err := deleteRange("k", "l"); err != nil {
		t.Fatalf("delete of 20 later versions (1840 bytes) under a bound of 2920: %v", err)
	}
	if kv := ts.get("k00", 0); kv != nil {
		t.Fatalf("k00 after the delete: %v", kv)
	}
}

// A transaction's deletes count together, and a refused transaction writes
// nothing, its puts included.
func TestTxnDeleteTooLarge(t *testing.T) {
	ts := newTestStore(t)
	value := strings.Repeat("v", 200)
	for i := range 20 {
		ts.put(fmt.Sprintf("a%02d", i), value)
		ts.put(fmt.Sprintf("b%02d", i), value)
	}
	ts.s.maxDeleteBytes = 30 * 292
	rev := ts.s.Rev()
	del := func(key, end string) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end)}}}
	}
	put := &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("c"), Value: []byte("x")}}}
	nested := &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{Success: []*pb.RequestOp{del("b", "c")}}}}

	_, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{put, del("a", "b"), nested}})
	if !errors.Is(err, ErrDeleteTooLarge) {
		t.Fatalf("a transaction deleting 40 first versions over a bound of 30: %v, want ErrDeleteTooLarge", err)
	}
	if got := ts.s.Rev(); got != rev {
		t.Fatalf("refused transaction moved the revision to %d from %d", got, rev)
	}
	if kv := ts.get("c", 0); kv != nil {
		t.Fatalf("the refused transaction's put is there: %v", kv)
	}
	if _, err := ts.txn(&pb.TxnRequest{Success: []*pb.RequestOp{put, del("a", "b")}}); err != nil {
		t.Fatalf("a transaction deleting 20 first versions under a bound of 30: %v", err)
	}
	if kv := ts.get("a00", 0); kv != nil {
		t.Fatalf("a00 after the transaction: %v", kv)
	}
}
