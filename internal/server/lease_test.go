package server

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The test members' election timeout is 100ms: their minimum lease TTL is
// one second.

// TestLeaseService drives the Lease service of one member with the etcd
// client: grants (chosen and given IDs, the minimum and maximum TTL),
// attached keys, time to live, the lease list, keep-alives, revokes and
// expiry.
func TestLeaseService(t *testing.T) {
	srv, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got := srv.MinLeaseTTL(); got != 1 {
		t.Fatalf("minimum TTL with a 100ms election timeout: %d, want 1", got)
	}
	short, err := cli.Grant(ctx, 0)
	if err != nil || short.ID <= 0 || short.TTL != 1 {
		t.Fatalf("grant of TTL 0: %+v, %v; want a positive ID and the minimum TTL", short, err)
	}
	if _, err := cli.Grant(ctx, 9_000_000_001); !errors.Is(err, rpctypes.ErrLeaseTTLTooLarge) {
		t.Fatalf("grant over the maximum TTL: %v", err)
	}
	raw := pb.NewLeaseClient(cli.ActiveConnection())
	const id = 42
	if g, err := raw.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: 60}); err != nil || g.ID != id || g.TTL != 60 {
		t.Fatalf("grant of lease 42: %+v, %v", g, err)
	}
	if _, err := raw.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: 60}); !errors.Is(toClientErr(err), rpctypes.ErrLeaseExist) {
		t.Fatalf("second grant of lease 42: %v", err)
	}
	if _, err := cli.Put(ctx, "unleased", "v", clientv3.WithLease(999)); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("put with an unknown lease: %v", err)
	}
	for _, k := range []string{"b", "a", "c"} {
		if _, err := cli.Put(ctx, k, "v", clientv3.WithLease(id)); err != nil {
			t.Fatal(err)
		}
	}
	// c leaves the lease; a transaction moves b to another lease.
	if _, err := cli.Put(ctx, "c", "w"); err != nil {
		t.Fatal(err)
	}
	other, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut("b", "w", clientv3.WithLease(other.ID))).Commit(); err != nil {
		t.Fatal(err)
	}
	ttl, err := cli.TimeToLive(ctx, id, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != 60 || ttl.TTL < 55 || ttl.TTL > 60 || len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "a" {
		t.Fatalf("time to live of 42: %+v; want granted 60, about 60 left, keys [a]", ttl)
	}
	if ttl, err := cli.TimeToLive(ctx, 777); err != nil || ttl.TTL != -1 {
		t.Fatalf("time to live of an unknown lease: %+v, %v; want TTL -1", ttl, err)
	}
	leases, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []clientv3.LeaseID
	for _, l := range leases.Leases {
		ids = append(ids, l.ID)
	}
	if !slices.Contains(ids, id) || !slices.Contains(ids, other.ID) {
		t.Fatalf("leases %v lack 42 or %x", ids, other.ID)
	}
	if ka, err := cli.KeepAliveOnce(ctx, id); err != nil || ka.TTL != 60 || ka.ID != id {
		t.Fatalf("keep-alive once: %+v, %v", ka, err)
	}
	if _, err := cli.KeepAliveOnce(ctx, 777); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("keep-alive of an unknown lease: %v", err)
	}
	// The revoke deletes b (moved to other) in one revision, and only b.
	before, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	rev, err := cli.Revoke(ctx, other.ID)
	if err != nil || rev.Header.Revision != before.Header.Revision+1 {
		t.Fatalf("revoke: %+v, %v; want revision %d", rev, err, before.Header.Revision+1)
	}
	if _, err := cli.Revoke(ctx, other.ID); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("second revoke: %v", err)
	}
	assertKeys(ctx, t, cli, "a", "c")

	// A lease kept alive outlives its TTL; one left alone expires, and
	// its keys go.
	kept, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	expiring, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "kept", "v", clientv3.WithLease(kept.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "expiring", "v", clientv3.WithLease(expiring.ID)); err != nil {
		t.Fatal(err)
	}
	kaCtx, stopKeepAlive := context.WithCancel(ctx)
	defer stopKeepAlive()
	if _, err := cli.KeepAlive(kaCtx, kept.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	waitFor(ctx, t, func() bool {
		resp, err := cli.Get(ctx, "expiring", clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	})
	assertKeys(ctx, t, cli, "a", "c", "kept")
	if ttl, err := cli.TimeToLive(ctx, expiring.ID); err != nil || ttl.TTL != -1 {
		t.Fatalf("time to live of an expired lease: %+v, %v", ttl, err)
	}
}

// toClientErr turns a raw gRPC error into the etcd client's error value.
func toClientErr(err error) error { return rpctypes.Error(err) }

// assertKeys checks the keys that exist now.
func assertKeys(ctx context.Context, t *testing.T, cli *clientv3.Client, want ...string) {
	t.Helper()
	resp, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, kv := range resp.Kvs {
		got = append(got, string(kv.Key))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
}

// TestLeaseTimeSurvivesRestart checks that a restarted member resumes a
// lease's time from its last checkpoint instead of the full TTL.
func TestLeaseTimeSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	srv, cli := startServer(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for a checkpoint of the lease that was not renewed.
	time.Sleep(leaseCheckpointRefresh + time.Second)
	_ = cli.Close()
	srv.Stop()
	_, cli = startServer(t, dir)
	ttl, err := cli.TimeToLive(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	// At least leaseCheckpointRefresh has passed; the new term may add an
	// election timeout, which rounds into the second below 60.
	if ttl.TTL <= 0 || ttl.TTL >= 60-int64(leaseCheckpointRefresh/time.Second)+1 {
		t.Fatalf("remaining TTL after a restart: %d of %d; want it to continue from a checkpoint", ttl.TTL, ttl.GrantedTTL)
	}
}

// TestClusterLeases runs leases on three members: grants and keep-alives
// through a follower, expiry that deletes the keys at the same revision on
// every member, and time kept across a moved and a stopped leader: the
// remaining TTL does not jump back up, and a lease kept alive through a
// follower does not expire.
func TestClusterLeases(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "leases")
	lead := c.leader(ctx)
	follower := (lead + 1) % 3
	third := (lead + 2) % 3
	cli := c.client(follower)
	waitFor(ctx, t, func() bool {
		_, err := cli.Put(ctx, "warm", "up")
		return err == nil
	})

	// Expiry: both keys go at one revision, the same on every member.
	expiring, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "e1", "v", clientv3.WithLease(expiring.ID)); err != nil {
		t.Fatal(err)
	}
	last, err := cli.Put(ctx, "e2", "v", clientv3.WithLease(expiring.ID))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, func() bool {
		resp, err := cli.Get(ctx, "e", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	})
	for i := range 3 {
		m := c.client(i)
		waitFor(ctx, t, func() bool {
			resp, err := m.Get(ctx, "e", clientv3.WithPrefix(), clientv3.WithSerializable(), clientv3.WithCountOnly())
			return err == nil && resp.Count == 0
		})
		for _, at := range []struct {
			rev  int64
			want int64
		}{{last.Header.Revision, 2}, {last.Header.Revision + 1, 0}} {
			resp, err := m.Get(ctx, "e", clientv3.WithPrefix(), clientv3.WithSerializable(), clientv3.WithRev(at.rev), clientv3.WithCountOnly())
			if err != nil || resp.Count != at.want {
				t.Fatalf("member %d at revision %d: %v keys (%v), want %d", i, at.rev, resp, err, at.want)
			}
		}
	}

	// A lease kept alive through a follower, one left alone, and one
	// renewed once through the follower.
	kept, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "kept", "v", clientv3.WithLease(kept.ID)); err != nil {
		t.Fatal(err)
	}
	kaCtx, stopKeepAlive := context.WithCancel(ctx)
	defer stopKeepAlive()
	if _, err := cli.KeepAlive(kaCtx, kept.ID); err != nil {
		t.Fatal(err)
	}
	alone, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if ka, err := cli.KeepAliveOnce(ctx, alone.ID); err != nil || ka.TTL != 30 {
		t.Fatalf("keep-alive once through a follower: %+v, %v", ka, err)
	}
	ttlOf := func(id clientv3.LeaseID) int64 {
		t.Helper()
		var ttl *clientv3.LeaseTimeToLiveResponse
		waitFor(ctx, t, func() bool {
			ttl, err = cli.TimeToLive(ctx, id)
			return err == nil
		})
		return ttl.TTL
	}
	// Let time run, so that a reset to the full TTL would show.
	time.Sleep(3 * time.Second)
	before := ttlOf(alone.ID)
	if before > 27 {
		t.Fatalf("remaining TTL 3s after a keep-alive of a 30s lease: %d", before)
	}
	time.Sleep(time.Second)
	// Move leadership to a member that does not lead. With 100 ms
	// election timeouts a loaded machine may have had an election since
	// the start, so the leader is looked up again, and asked again if one
	// happens before it answers.
	moved := -1
	waitFor(ctx, t, func() bool {
		from := c.leader(ctx)
		to := third
		if from == third {
			to = lead
		}
		_, err := c.client(from).MoveLeader(ctx, c.servers[to].memberID)
		if errors.Is(err, rpctypes.ErrNotLeader) {
			return false
		}
		if err != nil {
			t.Fatalf("move leader: %v", err)
		}
		moved = to
		return true
	})
	third = moved
	// The new leader may add an election timeout (100ms) to what it
	// learned; a second has passed.
	if after := ttlOf(alone.ID); after > before {
		t.Fatalf("remaining TTL went from %d to %d when leadership moved", before, after)
	}
	time.Sleep(2 * time.Second)
	before = ttlOf(alone.ID)
	time.Sleep(time.Second)
	c.stop(third)
	newLead := c.leader(ctx)
	if newLead == third {
		t.Fatalf("stopped member still leads")
	}
	if after := ttlOf(alone.ID); after > before {
		t.Fatalf("remaining TTL went from %d to %d when the leader stopped", before, after)
	}
	// Two TTLs after the last change of leader, the kept lease lives. A
	// gone lease reports TTL -1; 0 is a live one with less than a second
	// left, which a 2 s lease has between keep-alives: the client renews
	// a third of the TTL after an answer, on its next 500 ms tick, so up
	// to ~1.2 s after it.
	time.Sleep(4 * time.Second)
	if ttl := ttlOf(kept.ID); ttl < 0 {
		t.Fatalf("lease kept alive through a follower expired (TTL %d)", ttl)
	}
	if resp, err := cli.Get(ctx, "kept"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("key of the kept lease: %v, %v", resp, err)
	}
}

// TestKeepAlivesAreCheap renews many leases over one stream and checks that
// renewals make no log entries of their own: only the batched checkpoints
// reach the log.
func TestKeepAlivesAreCheap(t *testing.T) {
	srv, cli := startServer(t, t.TempDir())
	renewMany(t, srv, cli)
}

// TestKeepAlivesThroughAFollower is TestKeepAlivesAreCheap with the renewals
// sent to a follower, which forwards them to the leader, many to a message.
func TestKeepAlivesThroughAFollower(t *testing.T) {
	c := startTestCluster(t, 3, "keep-alives")
	renewed, got := renewThroughAFollower(t, c, "grpc_service="+renewalService)
	t.Logf("%d renewals reached the leader in %.0f messages", renewed, got)
	if got < 1 || got > float64(renewed)/4 {
		t.Fatalf("%d renewals forwarded in %.0f messages, want at least 1 and at most a quarter as many", renewed, got)
	}
}

// TestKeepAlivesThroughAFollowerToAnOlderLeader: a leader without the batched
// renewal service (a plinth from before it, in a rolling upgrade) answers
// it Unimplemented, and followers carry renewals over etcd's keep-alive
// stream instead.
func TestKeepAlivesThroughAFollowerToAnOlderLeader(t *testing.T) {
	c := newTestCluster(t, 3, "keep-alives-old-leader")
	for i := range c.cfgs {
		c.cfgs[i].withoutRenewalService = true
		c.start(i)
	}
	renewed, got := renewThroughAFollower(t, c, "grpc_service=etcdserverpb.Lease", "grpc_method=LeaseKeepAlive")
	if got < float64(renewed) {
		t.Fatalf("the leader took %.0f keep-alive messages for %d renewals through a follower, want one each", got, renewed)
	}
}

// renewThroughAFollower runs renewMany through a follower of c and returns
// how many renewals it made, and how many gRPC messages of the series
// (labels as name=value) the leader received meanwhile.
func renewThroughAFollower(t *testing.T, c *testCluster, series ...string) (renewed int, messages float64) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lead := c.leader(ctx)
	cli := c.client((lead + 1) % 3)
	waitFor(ctx, t, func() bool {
		_, err := cli.Put(ctx, "warm", "up")
		return err == nil
	})
	leadAddr := c.cfgs[lead].ListenClientURLs[0].Host
	received := func() float64 {
		return value(t, scrape(t, leadAddr), "grpc_server_msg_received_total", series...)
	}
	before := received()
	renewed = renewMany(t, c.servers[lead], cli)
	return renewed, received() - before
}

// renewMany grants leases through cli, renews them over one keep-alive
// stream, and checks that leader's log grew by the checkpoints only. It
// returns how many renewals it made.
func renewMany(t *testing.T, srv *Server, cli *clientv3.Client) int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const leases, rounds = 200, 10
	ids := make([]int64, leases)
	for i := range ids {
		g, err := cli.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = int64(g.ID)
	}
	stream, err := pb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Count from a log with nothing in flight: a checkpoint proposed
	// during the grants and committed after this point would count
	// against the renewals.
	waitFor(ctx, t, func() bool { return !srv.node.WritesInFlight() })
	startIndex := srv.node.CommitIndex()
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		for range rounds {
			for _, id := range ids {
				if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
					errc <- err
					return
				}
			}
		}
		errc <- stream.CloseSend()
	}()
	// Answers to different leases may come in any order.
	answers := map[int64]int{}
	for n := range leases * rounds {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("keep-alive answer %d: %v", n, err)
		}
		if resp.TTL != 60 {
			t.Fatalf("keep-alive answer %d: %+v, want TTL 60", n, resp)
		}
		answers[resp.ID]++
	}
	for _, id := range ids {
		if answers[id] != rounds {
			t.Fatalf("lease %x renewed %d times, want %d", id, answers[id], rounds)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	entries := srv.node.CommitIndex() - startIndex
	t.Logf("%d renewals in %v (%.0f/s), %d log entries", leases*rounds, elapsed, float64(leases*rounds)/elapsed.Seconds(), entries)
	// A checkpoint every checkpoint interval, of up to
	// leaseCheckpointBatch leases each.
	if limit := uint64(elapsed/srv.checkpointInterval()) + 2; entries > limit {
		t.Fatalf("%d renewals made %d log entries in %v, want at most %d", leases*rounds, entries, elapsed, limit)
	}
	return leases * rounds
}

// TestClusterLeasesSurviveARestart stops and restarts every member: a lease
// resumes from its last checkpoint, not its full TTL, and one that runs out
// after the restart still takes its keys with it, on every member.
func TestClusterLeasesSurviveARestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "lease-restart")
	c.leader(ctx)
	cli := c.client(0)
	var long, short *clientv3.LeaseGrantResponse
	waitFor(ctx, t, func() bool {
		var err error
		long, err = cli.Grant(ctx, 60)
		return err == nil
	})
	short, err := cli.Grant(ctx, 8)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "short", "v", clientv3.WithLease(short.ID)); err != nil {
		t.Fatal(err)
	}
	// Let both be checkpointed without a keep-alive.
	time.Sleep(leaseCheckpointRefresh + time.Second)
	for i := range 3 {
		c.stop(i)
	}
	for i := range 3 {
		c.start(i)
	}
	c.leader(ctx)
	cli = c.client(1)
	var ttl *clientv3.LeaseTimeToLiveResponse
	waitFor(ctx, t, func() bool {
		ttl, err = cli.TimeToLive(ctx, long.ID)
		return err == nil
	})
	if ttl.TTL <= 0 || ttl.TTL >= 60-int64(leaseCheckpointRefresh/time.Second)+1 {
		t.Fatalf("remaining TTL after the cluster restarted: %d of %d; want it to continue from a checkpoint", ttl.TTL, ttl.GrantedTTL)
	}
	for i := range 3 {
		m := c.client(i)
		waitFor(ctx, t, func() bool {
			resp, err := m.Get(ctx, "short", clientv3.WithSerializable(), clientv3.WithCountOnly())
			return err == nil && resp.Count == 0
		})
	}
}

// TestKeepAliveStreamsEndAtStop: a keep-alive stream that a client holds open
// between renewals, and one that waits for its first, end when the member
// stops instead of holding up the graceful stop for its whole grace period
// (3 s). Their handlers wait in Recv, where the stop cannot reach them: the
// server stops waiting once no unary request is in flight, and the streams
// end with their connections, Unavailable as etcd's stopping error is.
func TestKeepAliveStreamsEndAtStop(t *testing.T) {
	srv, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	lc := pb.NewLeaseClient(cli.ActiveConnection())
	renewed, err := lc.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := renewed.Send(&pb.LeaseKeepAliveRequest{ID: int64(g.ID)}); err != nil {
		t.Fatal(err)
	}
	if resp, err := renewed.Recv(); err != nil || resp.TTL != 60 {
		t.Fatalf("keep-alive: %v, %v", resp, err)
	}
	idle, err := lc.LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The server has the idle stream once its metrics count it started.
	waitFor(ctx, t, func() bool {
		return value(t, scrape(t, srv.ClientAddrs()[0]), "grpc_server_started_total", "grpc_method=LeaseKeepAlive") >= 2
	})
	start := time.Now()
	srv.Stop()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("stop took %v with two keep-alive streams open, want them ended at once", took)
	}
	for name, stream := range map[string]pb.Lease_LeaseKeepAliveClient{"renewed": renewed, "idle": idle} {
		if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
			t.Errorf("the %s stream ended with %v, want Unavailable", name, err)
		}
	}
}
