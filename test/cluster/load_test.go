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
	// that began after a new leader was elected and ended before the old
	// one restarted: the survivors take writes without it.
	minCycleAcks   = 100
	minWithoutAcks = 20
	// A write in flight to the leader when it dies may wait this long: its
	// proposal is lost with the leader, and the member that forwarded it
	// fails it only at its request timeout (7s, as etcd's), so the client's
	// timeout ends it first.
	loadOpTimeout = 2 * time.Second
	// The killed leader stays down this long after the kill, so that every
	// writer gets past a write lost with it and writes to the survivors.
	loadDown = loadOpTimeout + 1500*time.Millisecond
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

	// ackTimeline counts acknowledged writes by when they ended, per 250ms
	// from `from`, and those that failed, as "acked/failed".
	ackTimeline := func(from, to time.Time) []string {
		mu.Lock()
		defer mu.Unlock()
		const step = 250 * time.Millisecond
		n := int(to.Sub(from)/step) + 1
		acked, failed := make([]int, n), make([]int, n)
		for _, r := range records {
			if i := int(r.end.Sub(from) / step); r.end.After(from) && i < n {
				if r.acked {
					acked[i]++
				} else {
					failed[i]++
				}
			}
		}
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%d/%d", acked[i], failed[i])
		}
		return out
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
		electedAt := time.Now()
		elected := electedAt.Sub(killed)
		time.Sleep(time.Until(killed.Add(loadDown))) // load on the survivors alone
		restarted := time.Now()
		if err := restart(ctx, c, leader); err != nil {
			failure = err.Error()
			break
		}
		time.Sleep(300 * time.Millisecond)
		cycleAcks := acks.Load() - before
		without := countSince(electedAt, restarted)
		t.Logf("cycle %d: killed leader %s (term %d); %s elected in term %d after %v; %d writes acknowledged in the cycle, %d begun after the election and acknowledged while %s was down; %s ready %v after restart",
			cycle, leader.Name(), term, newLeader.Name(), newTerm, elected.Round(time.Millisecond), cycleAcks, without, leader.Name(), leader.Name(), time.Since(restarted).Round(time.Millisecond))
		switch {
		case cycleAcks < minCycleAcks:
			failure = fmt.Sprintf("cycle %d acknowledged %d writes, want at least %d", cycle, cycleAcks, minCycleAcks)
		case without < minWithoutAcks:
			failure = fmt.Sprintf("cycle %d: %d writes begun after the election were acknowledged while the killed leader was down, want at least %d; acknowledgements (by the time they ended, from the kill on, per 250ms): %v",
				cycle, without, minWithoutAcks, ackTimeline(killed, time.Now()))
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
	report(t, "acknowledged writes", checkRanges(ctx, c, records, acked))
	t.Logf("checked in %v", time.Since(checkStart).Round(time.Millisecond))
}

// checkRanges reads every load key from every member, with one serializable
// range once the member applied the newest acknowledged write, and with one
// linearizable range. Each acknowledged write must be there with its value
// and revision (a key is written once, so its newest version is its only
// one), and every key there must be one a writer put, with the value it put.
func checkRanges(ctx context.Context, c *testmember.Cluster, records []*loadRecord, acked []ackedWrite) []string {
	byKey := make(map[string]*loadRecord, len(records))
	for _, r := range records {
		byKey[r.key] = r
	}
	var maxRev int64
	for _, w := range acked {
		maxRev = max(maxRev, w.rev)
	}
	var errs []string
	for _, m := range c.Members {
		cli, err := m.Client()
		if err != nil {
			return append(errs, err.Error())
		}
		if *breakFlag != "nowait" && *breakFlag != "isolate" {
			if err := waitRevision(ctx, cli, maxRev); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", m.Name(), err))
			}
		}
		for _, read := range []struct {
			name string
			opts []clientv3.OpOption
		}{
			{"serializable", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSerializable()}},
			{"linearizable", append(linearizable(), clientv3.WithPrefix())},
		} {
			resp, err := cli.Get(ctx, "load/", read.opts...)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %s range: %v", m.Name(), read.name, err))
				continue
			}
			where := m.Name() + " (" + read.name + ")"
			seen := make(map[string]bool, len(resp.Kvs))
			for _, kv := range resp.Kvs {
				k := string(kv.Key)
				seen[k] = true
				r := byKey[k]
				switch {
				case r == nil:
					errs = append(errs, fmt.Sprintf("%s: key %s was written by no writer", where, k))
				case string(kv.Value) != r.value || kv.Version != 1:
					errs = append(errs, fmt.Sprintf("%s: %s=%q version %d, but its one put wrote %q", where, k, kv.Value, kv.Version, r.value))
				case r.acked && kv.ModRevision != r.rev:
					errs = append(errs, fmt.Sprintf("%s: %s at mod revision %d, acknowledged at %d", where, k, kv.ModRevision, r.rev))
				}
			}
			var lost []string
			for _, w := range acked {
				if !seen[w.key] {
					lost = append(lost, w.key)
				}
			}
			slices.Sort(lost)
			for _, k := range lost {
				errs = append(errs, fmt.Sprintf("LOST on %s: %s, acknowledged at revision %d, is absent", where, k, byKey[k].rev))
			}
		}
		_ = cli.Close()
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
