package cluster

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The shape of TestKillLeaderUnderLoad.
const (
	loadWriters = 20
	loadCycles  = 3
	// Each cycle must acknowledge this many writes in all, and this many
	// that began after the leader was killed and before it restarted: the
	// survivors take writes without it.
	minCycleAcks   = 100
	minWithoutAcks = 20
	loadOpTimeout  = 3 * time.Second
)

// loadRecord is the outcome of one put of the load. Every put writes a key
// of its own, so a key's value names the one put that wrote it.
type loadRecord struct {
	key, value string
	start, end time.Time
	acked      bool
	rev        int64
}

// TestKillLeaderUnderLoad runs concurrent writers against a three-member
// cluster, some pinned to one member each, the others on a client of all
// three, and kills -9 the current leader several times, restarting it each
// time. Each cycle must acknowledge a minimum of writes, some of them while
// the old leader is down. At the end every acknowledged write must be
// readable from every member, with the value and at the revision it was
// acknowledged with, and no two writes may share a revision.
func TestKillLeaderUnderLoad(t *testing.T) {
	ctx := t.Context()
	seed := pickSeed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	c := startCluster(t, 3)
	all := client(t, c.Endpoints()...)

	var (
		mu      sync.Mutex
		records []*loadRecord
		acks    atomic.Int64
	)
	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range loadWriters {
		cli := all
		if w%4 != 3 {
			cli = client(t, c.Members[w%len(c.Members)].Endpoint())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; lctx.Err() == nil; i++ {
				r := &loadRecord{key: fmt.Sprintf("load/%02d/%06d", w, i), value: fmt.Sprintf("w%d.%d", w, i), start: time.Now()}
				octx, cancel := context.WithTimeout(lctx, loadOpTimeout)
				resp, err := cli.Put(octx, r.key, r.value)
				cancel()
				r.end = time.Now()
				if err == nil {
					r.acked, r.rev = true, resp.Header.Revision
					acks.Add(1)
				}
				mu.Lock()
				records = append(records, r)
				mu.Unlock()
				if err != nil {
					// The member may be down: do not spin on it.
					select {
					case <-lctx.Done():
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		}()
	}
	countSince := func(from, to time.Time) (n int) {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range records {
			if r.acked && !r.start.Before(from) && r.end.Before(to) {
				n++
			}
		}
		return n
	}

	var failure string
	for cycle := 1; cycle <= loadCycles && failure == ""; cycle++ {
		before := acks.Load()
		time.Sleep(500*time.Millisecond + time.Duration(rng.Int64N(int64(time.Second))))
		leader, term := findLeader(t, c)
		killed := time.Now()
		if err := leader.Kill(); err != nil {
			failure = err.Error()
			break
		}
		newLeader, newTerm := findLeader(t, c)
		elected := time.Since(killed)
		time.Sleep(time.Second) // load on the survivors alone
		restarted := time.Now()
		if err := restart(ctx, leader); err != nil {
			failure = err.Error()
			break
		}
		time.Sleep(300 * time.Millisecond)
		cycleAcks := acks.Load() - before
		without := countSince(killed, restarted)
		t.Logf("cycle %d: killed leader %s (term %d); %s elected in term %d after %v; %d writes acknowledged in the cycle, %d begun and acknowledged while %s was down; %s ready %v after restart",
			cycle, leader.Name(), term, newLeader.Name(), newTerm, elected.Round(time.Millisecond), cycleAcks, without, leader.Name(), leader.Name(), time.Since(restarted).Round(time.Millisecond))
		switch {
		case cycleAcks < minCycleAcks:
			failure = fmt.Sprintf("cycle %d acknowledged %d writes, want at least %d", cycle, cycleAcks, minCycleAcks)
		case without < minWithoutAcks:
			failure = fmt.Sprintf("cycle %d: %d writes acknowledged while the killed leader was down, want at least %d", cycle, without, minWithoutAcks)
		}
	}
	stopLoad()
	wg.Wait()
	if failure != "" {
		t.Fatal(failure)
	}

	var acked []ackedWrite
	byRev := map[int64]*loadRecord{}
	var unacked int
	for _, r := range records {
		if !r.acked {
			unacked++
			continue
		}
		if other := byRev[r.rev]; other != nil {
			t.Errorf("two acknowledged writes at revision %d: %s and %s", r.rev, other.key, r.key)
		}
		byRev[r.rev] = r
		acked = append(acked, ackedWrite{key: r.key, value: r.value, rev: r.rev})
	}
	t.Logf("%d writes acknowledged, %d not; checking them on every member", len(acked), unacked)
	checkStart := time.Now()
	report(t, "acknowledged writes", checkAcked(ctx, c, acked))
	report(t, "linearizable ranges", checkRanges(ctx, c, records))
	t.Logf("checked in %v", time.Since(checkStart).Round(time.Millisecond))
}

// checkRanges reads every load key from every member with one linearizable
// range: each acknowledged write must be there with its value and revision,
// and every key there must be one a writer put, with the value it put.
func checkRanges(ctx context.Context, c *testmember.Cluster, records []*loadRecord) []string {
	byKey := make(map[string]*loadRecord, len(records))
	for _, r := range records {
		byKey[r.key] = r
	}
	var errs []string
	for _, m := range c.Members {
		ep := m.Name()
		cli, err := m.Client()
		if err != nil {
			return append(errs, err.Error())
		}
		resp, err := cli.Get(ctx, "load/", append(linearizable(), clientv3.WithPrefix())...)
		_ = cli.Close()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: range: %v", ep, err))
			continue
		}
		seen := make(map[string]bool, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			seen[k] = true
			r := byKey[k]
			switch {
			case r == nil:
				errs = append(errs, fmt.Sprintf("%s: key %s was written by no writer", ep, k))
			case string(kv.Value) != r.value || kv.Version != 1:
				errs = append(errs, fmt.Sprintf("%s: %s=%q version %d, but its one put wrote %q", ep, k, kv.Value, kv.Version, r.value))
			case r.acked && kv.ModRevision != r.rev:
				errs = append(errs, fmt.Sprintf("%s: %s at mod revision %d, acknowledged at %d", ep, k, kv.ModRevision, r.rev))
			}
		}
		var lost []string
		for _, r := range records {
			if r.acked && !seen[r.key] {
				lost = append(lost, r.key)
			}
		}
		slices.Sort(lost)
		for _, k := range lost {
			errs = append(errs, fmt.Sprintf("LOST on %s: %s, acknowledged at revision %d, is absent", ep, k, byKey[k].rev))
		}
	}
	return errs
}

// pickSeed returns -cluster.seed, or a seed from the clock, and logs it.
func pickSeed(t *testing.T) int64 {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (rerun with -cluster.seed=%d)", seed, seed)
	return seed
}
