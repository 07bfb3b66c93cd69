package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestQuotaNoSpace fills a member past its quota: the write that crosses it
// is refused and raises NOSPACE; while the alarm is active every write that
// would grow the store is refused with etcd's error, and reads, deletes and
// compactions go on; once space is freed (delete, compact, defragment) and
// the alarm disarmed, writes are taken again.
func TestQuotaNoSpace(t *testing.T) {
	const quota = 16 << 20
	srv, cli := startServerWith(t, t.TempDir(), func(c *Config) { c.QuotaBackendBytes = quota })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if size := srv.quota.dataSize.Load(); size >= quota/2 {
		t.Fatalf("a new member's database is %d bytes, too close to the test's quota %d", size, quota)
	}
	value := strings.Repeat("v", 256<<10)
	var refused error
	for i := 0; i < 400 && refused == nil; i++ {
		_, refused = cli.Put(ctx, fmt.Sprintf("big/%03d", i), value)
		if i%8 == 7 {
			time.Sleep(2 * dbSizeInterval) // let the member measure its growth
		}
	}
	if !errors.Is(refused, rpctypes.ErrNoSpace) {
		t.Fatalf("filling the database past its quota: %v, want %v", refused, rpctypes.ErrNoSpace)
	}
	waitFor(ctx, t, func() bool { return srv.applier.Alarms().NoSpace() })
	alarms, err := cli.AlarmList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(alarms.Alarms) != 1 || alarms.Alarms[0].Alarm != pb.AlarmType_NOSPACE || alarms.Alarms[0].MemberID != srv.memberID {
		t.Fatalf("alarms %v, want this member's NOSPACE", alarms.Alarms)
	}
	st, err := cli.Status(ctx, srv.ClientAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Errors) == 0 {
		t.Fatalf("status lists no error while NOSPACE is active")
	}
	if st.DbSizeQuota != quota || st.DbSizeInUse == 0 || st.DbSize < st.DbSizeInUse {
		t.Fatalf("status: quota %d (want %d), size %d, in use %d", st.DbSizeQuota, quota, st.DbSize, st.DbSizeInUse)
	}

	// Refused: any write that adds, even a small one and even if the
	// member's size went under the quota (the alarm decides).
	if _, err := cli.Put(ctx, "small", "x"); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("put under NOSPACE: %v, want %v", err, rpctypes.ErrNoSpace)
	}
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut("small", "x")).Commit(); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("txn with a put under NOSPACE: %v, want %v", err, rpctypes.ErrNoSpace)
	}
	// Served: reads, deletes, compactions.
	got, err := cli.Get(ctx, "big/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || got.Count == 0 {
		t.Fatalf("get under NOSPACE: %v (%d keys)", err, got.Count)
	}
	del, err := cli.Delete(ctx, "big/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("delete under NOSPACE: %v", err)
	}
	if _, err := cli.Compact(ctx, del.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact under NOSPACE: %v", err)
	}
	if _, err := cli.Defragment(ctx, srv.ClientAddrs()[0]); err != nil {
		t.Fatalf("defragment: %v", err)
	}
	if size := srv.quota.dataSize.Load(); size >= quota {
		t.Fatalf("after delete, compaction and defragment the database is %d bytes, still past the quota %d", size, quota)
	}
	// The alarm stays until disarmed.
	if _, err := cli.Put(ctx, "small", "x"); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("put before disarm: %v, want %v", err, rpctypes.ErrNoSpace)
	}
	disarmed, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{MemberID: srv.memberID, Alarm: pb.AlarmType_NOSPACE})
	if err != nil || len(disarmed.Alarms) != 1 {
		t.Fatalf("disarm: %v (%v)", err, disarmed)
	}
	if _, err := cli.Put(ctx, "small", "x"); err != nil {
		t.Fatalf("put after disarm: %v", err)
	}
	if alarms, err := cli.AlarmList(ctx); err != nil || len(alarms.Alarms) != 0 {
		t.Fatalf("alarms after disarm: %v (%v)", alarms, err)
	}
}
