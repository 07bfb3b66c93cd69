package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
	"github.com/plinthdb/plinth/internal/testnet"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// requestTimeout is the members' request timeout, as etcd's: 5s and two
// election timeouts. A request a member cannot serve fails after it.
const requestTimeout = 5*time.Second + 2*electionTimeout

// startNetCluster starts a new cluster of n members, each in a network
// namespace of its own on one bridge (internal/testnet), and waits until each
// serves. It skips the test where namespaces cannot be made.
func startNetCluster(t *testing.T, n int) (*testmember.Cluster, *testnet.Network) {
	t.Helper()
	nw := testnet.New(t, n)
	return startOn(t, nw), nw
}

// startOn starts a new cluster of one member on each host of nw and waits
// until each serves.
func startOn(t *testing.T, nw *testnet.Network) *testmember.Cluster {
	t.Helper()
	n := nw.Hosts()
	hosts := make([]testmember.Host, n)
	for i := range hosts {
		hosts[i] = testmember.Host{IP: nw.IP(i), Netns: nw.Netns(i)}
	}
	c := testmember.NewClusterOn(t, plinthBin, hosts, memberFlags()...)
	start := time.Now()
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d members serving in %v, each in its own network namespace", n, time.Since(start).Round(time.Millisecond))
	return c
}

// index is m's position in c.Members, which is its host in the network.
func index(c *testmember.Cluster, m *testmember.Member) int {
	return slices.Index(c.Members, m)
}

// others lists the members of c but m.
func others(c *testmember.Cluster, m *testmember.Member) []*testmember.Member {
	var out []*testmember.Member
	for _, o := range c.Members {
		if o != m {
			out = append(out, o)
		}
	}
	return out
}

// cutOff isolates member m from its peers, and heals the network when the
// test ends if it did not.
func cutOff(t *testing.T, c *testmember.Cluster, nw *testnet.Network, m *testmember.Member) {
	t.Helper()
	if *breakFlag == "nopartition" {
		t.Logf("-cluster.break=nopartition: %s is NOT cut off", m.Name())
		return
	}
	if err := nw.Isolate(index(c, m)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nw.Heal() })
}

// refused runs op against a member that cannot reach a quorum, with a
// client deadline well past the request timeout, and returns how long the
// member took to fail it. op must fail with the member's own error (not the
// client's deadline) within the request timeout and a margin.
func refused(t *testing.T, what string, op func(ctx context.Context) error) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), requestTimeout+10*time.Second)
	defer cancel()
	start := time.Now()
	err := op(ctx)
	took := time.Since(start)
	switch {
	case err == nil:
		t.Errorf("%s succeeded (in %v), want it refused", what, took.Round(time.Millisecond))
	case ctx.Err() != nil:
		t.Errorf("%s hung: the client gave up after %v (%v); want the member to fail it within the request timeout (%v)", what, took.Round(time.Millisecond), err, requestTimeout)
	case took > requestTimeout+3*time.Second:
		t.Errorf("%s failed only after %v: %v; want within the request timeout (%v)", what, took.Round(time.Millisecond), err, requestTimeout)
	default:
		t.Logf("%s failed after %v: %v", what, took.Round(time.Millisecond), err)
	}
	return took
}

// wantTimeout checks that err is one of the errors etcd answers a request
// it could not complete without a quorum: request timed out, or no leader.
// A member that loses its leader while a read waits answers "leader
// changed", as etcd's does; one that never had one for it, "request timed
// out".
func wantTimeout(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	ee := rpctypes.Error(err)
	if !errors.Is(ee, rpctypes.ErrTimeout) && !errors.Is(ee, rpctypes.ErrNoLeader) && !errors.Is(ee, rpctypes.ErrLeaderChanged) {
		t.Errorf("%s failed with %v; want etcd's %q (or %q, or %q)", what, err, rpctypes.ErrTimeout, rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged)
	}
}

// TestPartitionFollower cuts one follower off from its peers (its packets
// to and from them are dropped; clients still reach it): the majority keeps
// taking writes and serving linearizable reads; the isolated member fails
// linearizable reads and writes within the request timeout, with etcd's
// error, rather than hang or answer from its stale state, while its
// serializable reads still answer from that state; PreVote keeps it from
// disturbing the leader when the partition heals; and it catches up.
func TestPartitionFollower(t *testing.T) {
	ctx := t.Context()
	c, nw := startNetCluster(t, 3)
	leader, term := findLeader(t, c)
	var f *testmember.Member
	for _, m := range c.Members {
		if m != leader {
			f = m
			break
		}
	}
	all := client(t, c.Endpoints()...)
	before, err := all.Put(ctx, "part/k", "before")
	if err != nil {
		t.Fatal(err)
	}
	fcli := client(t, f.Endpoint())
	if err := waitRevision(ctx, fcli, before.Header.Revision); err != nil {
		t.Fatal(err)
	}

	cutOff(t, c, nw, f)
	t.Logf("cut off follower %s (leader %s, term %d)", f.Name(), leader.Name(), term)

	// The isolated member is asked while the majority writes.
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		refused(t, "linearizable get on the isolated "+f.Name(), func(ctx context.Context) error {
			_, err := rawGet(ctx, t, f.Endpoint(), "part/k")
			wantTimeout(t, "linearizable get on the isolated "+f.Name(), err)
			return err
		})
	}()
	go func() {
		defer wg.Done()
		refused(t, "put through the isolated "+f.Name(), func(ctx context.Context) error {
			_, err := fcli.Put(ctx, "part/isolated", "x")
			wantTimeout(t, "put through the isolated "+f.Name(), err)
			return err
		})
	}()

	// The majority serves: writes through both, each read back
	// linearizably through the other.
	var acked []ackedWrite
	majority := others(c, f)
	for i := range 20 {
		w, r := majority[i%2], majority[(i+1)%2]
		key, value := fmt.Sprintf("part/maj/%02d", i), fmt.Sprintf("v%d", i)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := client(t, w.Endpoint()).Put(wctx, key, value)
		cancel()
		if err != nil {
			t.Fatalf("put through %s with %s cut off: %v", w.Name(), f.Name(), err)
		}
		acked = append(acked, ackedWrite{key: key, value: value, rev: resp.Header.Revision})
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := client(t, r.Endpoint()).Get(rctx, key, linearizable()...)
		cancel()
		if err != nil {
			t.Fatalf("linearizable get through %s with %s cut off: %v", r.Name(), f.Name(), err)
		}
		if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != value {
			t.Errorf("linearizable get of %s through %s after its put was acknowledged: %v", key, r.Name(), got.Kvs)
		}
	}

	// Serializable reads on the isolated member answer from its own state:
	// what it had, and none of what it could not receive.
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	got, err := fcli.Get(sctx, "part/", clientv3.WithPrefix(), clientv3.WithSerializable())
	cancel()
	if err != nil {
		t.Errorf("serializable get on the isolated %s: %v", f.Name(), err)
	} else if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "before" {
		t.Errorf("serializable get on the isolated %s: %d keys %v, want only part/k=before", f.Name(), len(got.Kvs), got.Kvs)
	}
	wg.Wait()

	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	maxRev := acked[len(acked)-1].rev
	if err := waitRevision(ctx, fcli, maxRev); err != nil {
		t.Fatalf("%s after the heal: %v", f.Name(), err)
	}
	t.Logf("%s caught up to revision %d %v after the heal", f.Name(), maxRev, time.Since(healed).Round(time.Millisecond))
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	got, err = fcli.Get(rctx, "part/maj/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil || got.Count != int64(len(acked)) {
		t.Errorf("linearizable count on the healed %s: %v (err %v), want %d", f.Name(), got, err, len(acked))
	}
	report(t, "acknowledged writes", checkAcked(ctx, c, acked))

	// PreVote: the isolated member never won a pre-vote, so it did not
	// raise its term, and its return does not depose the leader.
	after, afterTerm := findLeader(t, c)
	if after != leader || afterTerm != term {
		t.Errorf("after the heal %s leads in term %d; before the partition %s led in term %d (PreVote should keep the rejoining follower from forcing an election)", after.Name(), afterTerm, leader.Name(), term)
	}
}

// TestPartitionLeader cuts the leader off from its followers while clients
// write through the followers: the followers elect a new leader within a
// few election timeouts; the old leader steps down on its own (CheckQuorum),
// as its Maintenance.Status shows, and fails linearizable reads and writes;
// when the partition heals it follows the new leader and holds every write
// acknowledged meanwhile.
func TestPartitionLeader(t *testing.T) {
	ctx := t.Context()
	c, nw := startNetCluster(t, 3)
	old, term := findLeader(t, c)
	oldSt, err := old.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	majority := others(c, old)

	// Writers on the followers, each write of a key of its own.
	var (
		mu    sync.Mutex
		acked []ackedWrite
	)
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		cli := client(t, majority[w%2].Endpoint())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; lctx.Err() == nil; i++ {
				key, value := fmt.Sprintf("part/w%d/%05d", w, i), fmt.Sprintf("v%d.%d", w, i)
				octx, cancel := context.WithTimeout(lctx, 2*time.Second)
				resp, err := cli.Put(octx, key, value)
				cancel()
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				mu.Lock()
				acked = append(acked, ackedWrite{key: key, value: value, rev: resp.Header.Revision})
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	ackCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	time.Sleep(300 * time.Millisecond)

	cut := time.Now()
	cutOff(t, c, nw, old)
	t.Logf("cut off leader %s (term %d)", old.Name(), term)

	// The followers elect one of themselves, in a higher term.
	const electWithin = 5 * electionTimeout
	var newLeader uint64
	var newTerm uint64
	for newLeader == 0 {
		var sts []testmember.Status
		for _, m := range majority {
			if st, err := m.Status(ctx); err == nil {
				sts = append(sts, st)
			}
		}
		if len(sts) == 2 && sts[0].Leader == sts[1].Leader && sts[0].RaftTerm == sts[1].RaftTerm &&
			sts[0].Leader != 0 && sts[0].Leader != oldSt.ID && sts[0].RaftTerm > term {
			newLeader, newTerm = sts[0].Leader, sts[0].RaftTerm
			break
		}
		if time.Since(cut) > electWithin {
			t.Fatalf("%v after the leader %s was cut off, its followers agree on no new leader: %+v", electWithin, old.Name(), sts)
		}
		time.Sleep(50 * time.Millisecond)
	}
	elected := time.Since(cut)
	t.Logf("followers elected %x in term %d, %v after the cut", newLeader, newTerm, elected.Round(time.Millisecond))

	// The old leader learns no more from a quorum: CheckQuorum makes it
	// step down within an election timeout or two of the cut.
	const stepDownWithin = 3 * electionTimeout
	for {
		st, err := old.Status(ctx)
		if err == nil && st.Leader != st.ID {
			t.Logf("old leader %s stepped down %v after the cut: it knows leader %x, term %d", old.Name(), time.Since(cut).Round(time.Millisecond), st.Leader, st.RaftTerm)
			break
		}
		if time.Since(cut) > stepDownWithin {
			t.Fatalf("old leader %s still says it leads %v after it was cut off (status %+v, err %v): CheckQuorum should have made it step down", old.Name(), stepDownWithin, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// It refuses what needs a quorum, with etcd's errors, and does not
	// hang.
	ocli := client(t, old.Endpoint())
	var rw sync.WaitGroup
	rw.Add(2)
	go func() {
		defer rw.Done()
		refused(t, "linearizable get on the old leader "+old.Name(), func(ctx context.Context) error {
			_, err := rawGet(ctx, t, old.Endpoint(), "part/w0/00000")
			wantTimeout(t, "linearizable get on the old leader "+old.Name(), err)
			return err
		})
	}()
	go func() {
		defer rw.Done()
		refused(t, "put through the old leader "+old.Name(), func(ctx context.Context) error {
			_, err := ocli.Put(ctx, "part/old", "x")
			wantTimeout(t, "put through the old leader "+old.Name(), err)
			return err
		})
	}()
	rw.Wait()
	during := ackCount()

	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	// Once the partition heals, the old leader is back within a couple
	// of seconds: a linearizable read through it needs its streams to
	// the new leader and back. Streams the partition stalled are aborted
	// and redialed, not left to the kernel's retransmission backoff
	// (seconds apart after seconds of loss; see transport's
	// abortStalledStreams).
	const backWithin = 4 * time.Second
	for {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := rawGet(rctx, t, old.Endpoint(), "part/w0/00000")
		cancel()
		if err == nil {
			t.Logf("a linearizable read through the old leader %s answered %v after the heal", old.Name(), time.Since(healed).Round(time.Millisecond))
			break
		}
		if time.Since(healed) > backWithin {
			t.Fatalf("%v after the heal, a linearizable read through the old leader %s still fails: %v", backWithin, old.Name(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	stopLoad()
	wg.Wait()
	if during < 100 {
		t.Errorf("the majority acknowledged %d writes in all by the end of the partition, want at least 100", during)
	}

	// It follows: every member agrees on the leader the majority elected
	// (PreVote: the old leader, behind, cannot win a pre-vote).
	leader, lterm := findLeader(t, c)
	st, _ := leader.Status(ctx)
	if leader == old || st.ID != newLeader {
		t.Errorf("after the heal %s (id %x) leads in term %d; want the leader the majority elected, %x in term %d", leader.Name(), st.ID, lterm, newLeader, newTerm)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d writes acknowledged (%d by the end of the partition); checking them on every member", len(acked), during)
	report(t, "acknowledged writes", checkAcked(ctx, c, acked))
}
