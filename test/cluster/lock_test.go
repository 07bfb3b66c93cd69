package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/plinthdb/plinth/internal/lockelect/v3lockpb"
	"github.com/plinthdb/plinth/internal/testmember"
)

// Lock fencing under faults: clients take one lock in a loop, half through
// the Lock service (v3lockpb, on whichever member their client talks to) and
// half with the client's Mutex recipe, both on the same name, so the two
// hand the lock to each other. Each holder writes under its fencing token
// (its lock key's create revision, compared in the write's txn), and after
// releasing it tries once more with the now stale token. The leader is
// killed (kill -9) twice during the run and started again.
//
// From the recorded writes the test proves:
//   - no write with a stale token succeeded;
//   - at the revision of every successful fenced write, its writer held the
//     lock: its key was the oldest under the lock's prefix (read back at that
//     revision);
//   - in revision order, successful writes never go back to an older token:
//     no two holders' writes interleave.
//
// -cluster.break=nofence makes the writes unconditional, and the test fails.

const (
	lockName        = "fencelock"
	lockRunFor      = 15 * time.Second
	lockSessionTTL  = 3 // seconds
	lockOpTimeout   = 5 * time.Second
	lockWorkers     = 4
	writesPerHold   = 3
	lockRestartWait = 1500 * time.Millisecond
)

// lockKillsAt are the times into the run at which the leader is killed.
var lockKillsAt = []time.Duration{4 * time.Second, 9 * time.Second}

// fencedWrite is one write a holder attempted.
type fencedWrite struct {
	worker int
	token  int64 // the create revision of the writer's lock key
	stale  bool  // made after the writer released the lock
	ok     bool  // the txn succeeded (its compare held)
	rev    int64 // the txn's revision, when it answered
	err    error
}

func TestLockFencingUnderFaults(t *testing.T) {
	ctx := t.Context()
	c := startCluster(t, 3)

	var (
		mu     sync.Mutex
		writes []fencedWrite
		holds  int
	)
	record := func(w fencedWrite) {
		mu.Lock()
		writes = append(writes, w)
		mu.Unlock()
	}
	runCtx, stop := context.WithTimeout(ctx, lockRunFor)
	defer stop()
	var wg sync.WaitGroup
	for w := range lockWorkers {
		cli := client(t, c.Endpoints()...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for runCtx.Err() == nil {
				n, err := holdOnce(runCtx, cli, w, w%2 == 0, record)
				mu.Lock()
				holds += n
				mu.Unlock()
				if err != nil && runCtx.Err() == nil {
					time.Sleep(100 * time.Millisecond) // a member may be down
				}
			}
		}()
	}

	// The nemesis: kill -9 the leader, start it again, twice.
	kills := 0
	start := time.Now()
	for _, at := range lockKillsAt {
		select {
		case <-runCtx.Done():
		case <-time.After(time.Until(start.Add(at))):
		}
		if runCtx.Err() != nil {
			break
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		leader, _, err := c.Leader(lctx)
		cancel()
		if err != nil {
			t.Fatalf("no leader to kill: %v", err)
		}
		if err := leader.Kill(); err != nil {
			t.Fatal(err)
		}
		kills++
		t.Logf("killed the leader %s at %v", leader.Name(), time.Since(start).Round(time.Millisecond))
		time.Sleep(lockRestartWait)
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = restart(rctx, c, leader)
		cancel()
		if err != nil {
			t.Fatalf("restart %s: %v", leader.Name(), err)
		}
	}
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	ok, refused, failed, staleTried := 0, 0, 0, 0
	for _, w := range writes {
		switch {
		case w.stale:
			staleTried++
		case w.err != nil:
			failed++
		case w.ok:
			ok++
		default:
			refused++
		}
	}
	t.Logf("%d kills, %d holds; fenced writes: %d succeeded, %d refused, %d failed; %d stale writes tried",
		kills, holds, ok, refused, failed, staleTried)
	if kills == 0 || ok < 10 || staleTried < 5 {
		t.Fatalf("too little happened to check: %d kills, %d fenced writes, %d stale tries", kills, ok, staleTried)
	}
	report(t, "lock fencing", checkFencing(t, c, writes))
}

// holdOnce takes the lock once (through the Lock service or the Mutex
// recipe, under a session of its own), writes under its token, releases the
// lock and tries a stale write. It returns how many holds it made (0 or 1).
func holdOnce(ctx context.Context, cli *clientv3.Client, worker int, service bool, record func(fencedWrite)) (int, error) {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(lockSessionTTL), concurrency.WithContext(ctx))
	if err != nil {
		return 0, err
	}
	// Revoking ends the hold however the loop ended; if the revoke fails,
	// the lease ends after its TTL.
	defer s.Close()

	octx, cancel := context.WithTimeout(ctx, lockOpTimeout)
	defer cancel()
	var key string
	var unlock func(context.Context) error
	if service {
		locks := v3lockpb.NewLockClient(cli.ActiveConnection())
		resp, err := locks.Lock(octx, &v3lockpb.LockRequest{Name: []byte(lockName), Lease: int64(s.Lease())})
		if err != nil {
			return 0, err
		}
		key = string(resp.Key)
		unlock = func(ctx context.Context) error {
			_, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: resp.Key})
			return err
		}
	} else {
		m := concurrency.NewMutex(s, lockName)
		if err := m.Lock(octx); err != nil {
			return 0, err
		}
		key, unlock = m.Key(), m.Unlock
	}
	got, err := cli.Get(octx, key)
	if err != nil {
		return 1, err
	}
	if len(got.Kvs) == 0 {
		return 1, fmt.Errorf("lock key %s gone after locking", key)
	}
	token := got.Kvs[0].CreateRevision
	write := func(stale bool) error {
		cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", token)
		txn := cli.Txn(octx).If(cmp)
		if *breakFlag == "nofence" {
			txn = cli.Txn(octx)
		}
		resp, err := txn.Then(clientv3.OpPut("fenced", fmt.Sprintf("worker %d token %d", worker, token))).Commit()
		w := fencedWrite{worker: worker, token: token, stale: stale, err: err}
		if err == nil {
			w.ok, w.rev = resp.Succeeded, resp.Header.Revision
		}
		record(w)
		return err
	}
	for range writesPerHold {
		if err := write(false); err != nil {
			return 1, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := unlock(octx); err != nil {
		return 1, err
	}
	return 1, write(true)
}

// checkFencing checks the recorded writes and the history of the fenced key
// (see the top of the file). The history holds every write that took
// effect, those whose answer was lost to a fault included.
func checkFencing(t *testing.T, c *testmember.Cluster, writes []fencedWrite) []string {
	var errs []string
	acked := map[int64]fencedWrite{}
	for _, w := range writes {
		switch {
		case w.stale && w.err == nil && w.ok:
			errs = append(errs, fmt.Sprintf("worker %d: a write with stale token %d succeeded at revision %d", w.worker, w.token, w.rev))
		case w.err == nil && w.ok:
			acked[w.rev] = w
		}
	}
	cli := client(t, c.Endpoints()...)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	history := fencedHistory(ctx, t, cli)
	var last *mvccpb.KeyValue
	var lastToken int64
	for _, kv := range history {
		var worker int
		var token int64
		if _, err := fmt.Sscanf(string(kv.Value), "worker %d token %d", &worker, &token); err != nil {
			errs = append(errs, fmt.Sprintf("revision %d: unexpected value %q", kv.ModRevision, kv.Value))
			continue
		}
		delete(acked, kv.ModRevision)
		if last != nil && token < lastToken {
			errs = append(errs, fmt.Sprintf("revision %d: %q after %q at revision %d: an older holder wrote after a newer one",
				kv.ModRevision, kv.Value, last.Value, last.ModRevision))
		}
		last, lastToken = kv, token
		resp, err := cli.Get(ctx, lockName+"/", clientv3.WithPrefix(), clientv3.WithRev(kv.ModRevision),
			clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
		switch {
		case err != nil:
			errs = append(errs, fmt.Sprintf("read the lock's holder at revision %d: %v", kv.ModRevision, err))
		case len(resp.Kvs) == 0:
			errs = append(errs, fmt.Sprintf("revision %d: %q written while nobody held the lock", kv.ModRevision, kv.Value))
		case resp.Kvs[0].CreateRevision != token:
			errs = append(errs, fmt.Sprintf("revision %d: %q written while %s (token %d) held the lock",
				kv.ModRevision, kv.Value, resp.Kvs[0].Key, resp.Kvs[0].CreateRevision))
		}
	}
	for rev, w := range acked {
		errs = append(errs, fmt.Sprintf("worker %d: its write with token %d acknowledged at revision %d is not in the history", w.worker, w.token, rev))
	}
	return errs
}

// fencedHistory returns every version the fenced key had, oldest first, up to
// the store's current revision.
func fencedHistory(ctx context.Context, t *testing.T, cli *clientv3.Client) []*mvccpb.KeyValue {
	t.Helper()
	now, err := cli.Get(ctx, "fenced")
	if err != nil {
		t.Fatalf("read the fenced key: %v", err)
	}
	if len(now.Kvs) == 0 {
		return nil
	}
	lastRev := now.Kvs[0].ModRevision
	var out []*mvccpb.KeyValue
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range cli.Watch(wctx, "fenced", clientv3.WithRev(1)) {
		if err := resp.Err(); err != nil {
			t.Fatalf("watch the fenced key: %v", err)
		}
		for _, ev := range resp.Events {
			out = append(out, ev.Kv)
			if ev.Kv.ModRevision >= lastRev {
				return out
			}
		}
	}
	t.Fatalf("the watch of the fenced key ended: %v", ctx.Err())
	return nil
}
