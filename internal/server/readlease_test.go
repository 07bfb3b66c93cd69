package server

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
)

// readRepeatedly makes n linearizable reads of key at member i, each of which
// must find want.
func (c *testCluster) readRepeatedly(ctx context.Context, i, n int, key, want string) {
	c.t.Helper()
	kv := c.rawKV(i)
	for range n {
		resp, err := kv.Range(ctx, &etcdserverpb.RangeRequest{Key: []byte(key)})
		if err != nil {
			c.t.Fatalf("linearizable read at m%d: %v", i, err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != want {
			c.t.Fatalf("linearizable read at m%d found %v, want %q", i, resp.Kvs, want)
		}
	}
}

// The leader answers linearizable reads, its own and its followers', from its
// read lease: a few read index rounds keep it, not one round each. With the
// lease off, as etcd, every read of the leader's takes a round.
func TestClusterReadLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const reads = 200
	for _, on := range []bool{true, false} {
		c := newTestCluster(t, 3, "read-lease")
		for i := range 3 {
			c.cfgs[i].WithoutReadLease = !on
			// A lease of 882 ms, renewed every half of it: the bound
			// below holds however slowly a loaded machine reads.
			c.cfgs[i].ElectionTimeout = time.Second
			c.start(i)
		}
		lead := c.leader(ctx)
		if _, err := c.client(lead).Put(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		leader := c.servers[lead].node
		before := leader.ReadIndexRounds()
		c.readRepeatedly(ctx, lead, reads, "k", "v")
		own := leader.ReadIndexRounds() - before
		before = leader.ReadIndexRounds()
		c.readRepeatedly(ctx, (lead+1)%3, reads, "k", "v")
		followers := leader.ReadIndexRounds() - before
		t.Logf("lease %v: the leader asked %d rounds for %d reads of its own, %d for %d of a follower", on, own, reads, followers, reads)
		switch {
		case on && (own > reads/4 || followers > reads/4):
			t.Fatalf("with the lease, the leader asked %d and %d read index rounds for %d reads each", own, followers, reads)
		case !on && own < reads:
			t.Fatalf("without the lease, the leader asked %d read index rounds for %d reads", own, reads)
		}
		for i := range 3 {
			c.stop(i)
		}
	}
}

// timedRead is one linearizable read: when it was sent, and what it found.
type timedRead struct {
	sent  time.Time
	value string
	err   error
}

// A leader cut off from its followers keeps answering from its lease only
// until they could have elected another leader: no read sent after a write
// was acknowledged on the other side may miss it.
func TestClusterReadLeaseEndsBeforeAnotherLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, p := startPartitionableCluster(t, "read-lease-cut")
	lead := c.leader(ctx)
	if _, err := c.client(lead).Put(ctx, "k", "before"); err != nil {
		t.Fatal(err)
	}
	c.readRepeatedly(ctx, lead, 10, "k", "before") // the lease is held

	var (
		mu    sync.Mutex
		reads []timedRead
		stop  = make(chan struct{})
		done  = make(chan struct{})
	)
	kv := c.rawKV(lead)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			r := timedRead{sent: time.Now()}
			rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			resp, err := kv.Range(rctx, &etcdserverpb.RangeRequest{Key: []byte("k")})
			rcancel()
			r.err = err
			if err == nil && len(resp.Kvs) == 1 {
				r.value = string(resp.Kvs[0].Value)
			}
			mu.Lock()
			reads = append(reads, r)
			mu.Unlock()
		}
	}()

	time.Sleep(20 * time.Millisecond)
	oldLead := c.servers[lead]
	p.set(oldLead.memberID)
	cut := time.Now()
	other := (lead + 1) % 3
	var acked time.Time
	for {
		wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
		_, err := c.rawKV(other).Put(wctx, &etcdserverpb.PutRequest{Key: []byte("k"), Value: []byte("after")})
		wcancel()
		if err == nil {
			acked = time.Now()
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the majority never took a write after the leader was cut off")
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-done

	mu.Lock()
	defer mu.Unlock()
	served := 0
	for _, r := range reads {
		if r.err != nil || !r.sent.After(cut) {
			continue
		}
		served++
		if r.sent.After(acked) && r.value != "after" {
			t.Fatalf("a read sent %v after the write on the majority was acknowledged found %q", r.sent.Sub(acked), r.value)
		}
	}
	t.Logf("the cut-off leader answered %d reads sent after the cut; the majority acknowledged a write %v after it", served, acked.Sub(cut).Round(time.Millisecond))
}
