package lockelect

import (
	"context"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestKeys(t *testing.T) {
	for _, tc := range []struct {
		prefix, end string
	}{
		{"lock/", "lock0"},
		{"/", "0"},
		{"a\xff/", "a\xff0"},
		{"\xff\xff", "\x00"},
	} {
		if got := string(prefixEnd([]byte(tc.prefix))); got != tc.end {
			t.Errorf("prefixEnd(%q) = %q, want %q", tc.prefix, got, tc.end)
		}
	}
	// The key of a lease is etcd's: the prefix and the ID in lower-case hex.
	if got := string(candidateKey([]byte("lock/"), 0x694d7a6c0b1c2d3e)); got != "lock/694d7a6c0b1c2d3e" {
		t.Errorf("candidateKey = %q", got)
	}
	if got := string(candidateKey([]byte("lock/"), -1)); got != fmt.Sprintf("lock/%x", int64(-1)) {
		t.Errorf("candidateKey of a negative lease = %q", got)
	}
}

// TestAsEtcd checks the codes etcd's services answer: etcd errors of the
// requests they make come back under code Unknown with their message, as
// they do from etcd (which sees them through a client).
func TestAsEtcd(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{rpctypes.ErrGRPCLeaseNotFound, codes.Unknown, "etcdserver: requested lease not found"},
		{rpctypes.ErrGRPCEmptyKey, codes.Unknown, "etcdserver: key is not provided"},
		{fmt.Errorf("lockelect: grant a session lease: %w", rpctypes.ErrGRPCNoSpace), codes.Unknown, "etcdserver: mvcc: database space exceeded"},
		{errNotLeader, codes.Unknown, "election: not leader"},
		{context.Canceled, codes.Canceled, "context canceled"},
		{context.DeadlineExceeded, codes.DeadlineExceeded, "context deadline exceeded"},
		{status.Error(codes.Unavailable, "something new"), codes.Unavailable, "something new"},
	} {
		st := status.Convert(asEtcd(tc.err))
		if st.Code() != tc.code || st.Message() != tc.msg {
			t.Errorf("asEtcd(%v) = %v %q, want %v %q", tc.err, st.Code(), st.Message(), tc.code, tc.msg)
		}
	}
	if asEtcd(nil) != nil {
		t.Error("asEtcd(nil) is not nil")
	}
}
