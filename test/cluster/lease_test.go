package cluster

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/plinthdb/plinth/internal/testmember"
)

// Leases under leader faults (issue 17): the nemesis kills -9 the leader
// and restarts it, then pauses the leader (SIGSTOP) and resumes it,
// alternately; each time the other two elect a leader among themselves
// before the faulted member runs again, but for every other kill, which
// restarts the member at once. Meanwhile
//   - one lease is kept alive by a client of all three members (the etcd
//     client's KeepAlive stream): it must never expire, its key must be
//     there at every check and at the end, the KeepAlive channel must never
//     close, and after every fault the stream must get a response again;
//   - leases nobody keeps alive, granted at different times with TTLs of
//     10-16s, are polled (LeaseTimeToLive, through a member the nemesis is
//     not faulting) every leasePoll. The remaining TTL reported may go up
//     between two answers by at most the election timeout rounded up to a
//     second: the extension a new leader grants on taking over, not a
//     restart of the TTL. Each lease must expire (TTL -1, key deleted) no
//     earlier than its TTL after its Grant was sent, and no later than its
//     TTL plus one election timeout per leader elected in its life plus
//     leaseExpirySlack after its Grant returned;
//   - afterwards every member has each expired lease's key at the revision
//     before its deletion and not at the deletion's revision: the revoke is
//     one entry of the log, applied at the same revision everywhere.
const (
	keptTTL   = 10 // seconds; see TestLeasesUnderLeaderFaults
	leasePoll = 300 * time.Millisecond
	// leaseOpTimeout bounds each poll: one to a member that dies or
	// stops meanwhile fails, and the next poll goes to another member.
	leaseOpTimeout = time.Second
	leaseGrantGap  = 1500 * time.Millisecond
	// leaseExpirySlack is how much later than its bound a lease may be
	// seen unrevoked: the leader looks for expired leases every 100ms and
	// its revoke must commit (a poll that saw the lease left at most this
	// late was sent before the revoke applied); the answer's own way back
	// on a loaded machine; and, at each leader change, the time between
	// the old leader measuring a checkpoint and the new one applying it:
	// milliseconds usually, but a member restarted after kill -9 applies
	// the new leader's checkpoint as it catches up, late by its restart,
	// and gives that back if it is elected before the next checkpoint
	// refresh (5s). Over a lease's life (up to 7 leader changes in the
	// default run) that added up to 1.7s at most in runs at load 5-8.
	leaseExpirySlack = 2500 * time.Millisecond
)

// Every other kill restarts the killed leader at once, before the others
// elect a leader among themselves: it may win again, with the deadlines it
// reloaded at its restart, which must count the time since it persisted
// them and the time it was down (see TestLeaseTimeAcrossWholeClusterRestart).

// expiringTTLs are the TTLs of the leases nobody keeps alive, in the order
// they are granted, one every leaseGrantGap.
var expiringTTLs = []int64{10, 16, 12, 14, 11}

// expiringLease is a lease nobody keeps alive, and what the polls saw.
type expiringLease struct {
	id         clientv3.LeaseID
	ttl        int64
	key        string
	sent, got  time.Time // the Grant was sent, answered
	grantTerm  uint64    // the raft term of the Grant's answer
	keyRev     int64     // the revision of the put of key
	lastTTL    int64     // the last remaining TTL a poll reported (first: ttl)
	lastSent   time.Time // when the last poll that found it was sent
	goneAt     time.Time // when the first answer that found it gone came
	goneTerm   uint64    // the raft term of that answer
	polls      int
	tries      int   // Grant and Put calls it took
	lastErr    error // the last that failed
	maxJump    int64
	deletedRev int64
}

// leaseRun is the state the pollers, the keep-alive reader and the
// nemesis share.
type leaseRun struct {
	mu       sync.Mutex
	faulted  *testmember.Member // the member the nemesis is faulting, nil between faults
	leases   []*expiringLease
	kaTimes  []time.Time // when keep-alive responses came
	kaClosed time.Time   // when the KeepAlive channel closed; zero if open
	keyGets  int         // successful reads of the kept lease's key
	keyLost  int64       // the revision of the first read that missed it
	errs     []string
}

func (r *leaseRun) errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// pick is the index of the member of c to ask on try n: the next one in
// turn that the nemesis is not faulting.
func (r *leaseRun) pick(c *testmember.Cluster, n int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := n % len(c.Members)
	if c.Members[i] == r.faulted {
		i = (i + 1) % len(c.Members)
	}
	return i
}

// kaSince reports whether a keep-alive response came after t.
func (r *leaseRun) kaSince(t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.kaTimes) > 0 && r.kaTimes[len(r.kaTimes)-1].After(t)
}

func TestLeasesUnderLeaderFaults(t *testing.T) {
	ctx := t.Context()
	seed := pickSeed(t)
	c := startCluster(t, 3)
	all := client(t, c.Endpoints()...)
	var members []*clientv3.Client
	for _, m := range c.Members {
		members = append(members, client(t, m.Endpoint()))
	}
	// A new leader may give back at most its election timeout; TTLs are
	// reported in whole seconds.
	maxJump := int64(math.Ceil(electionTimeout.Seconds()))
	run := &leaseRun{}

	// The kept lease: TTL 10s, so that its keep-alives (every TTL/3) get
	// through a pause of the member the stream is on (until the others
	// elect a leader: 1-2s, more on a loaded machine) with room: the
	// client gives up on a lease after a TTL without an answer.
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	kept, err := all.Grant(gctx, keptTTL)
	if err == nil {
		_, err = all.Put(gctx, "lease/kept", "kept", clientv3.WithLease(kept.ID))
	}
	cancel()
	if err != nil {
		t.Fatalf("grant the kept lease: %v", err)
	}
	kaCtx, stopKA := context.WithCancel(ctx)
	defer stopKA()
	kaCh, err := all.KeepAlive(kaCtx, kept.ID)
	if err != nil {
		t.Fatalf("keep the lease alive: %v", err)
	}
	kaDone := make(chan struct{})
	go func() {
		defer close(kaDone)
		for range kaCh {
			run.mu.Lock()
			run.kaTimes = append(run.kaTimes, time.Now())
			run.mu.Unlock()
		}
		run.mu.Lock()
		run.kaClosed = time.Now()
		run.mu.Unlock()
	}()

	start := time.Now()
	stopPolls, cancelPolls := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		grantLeases(stopPolls, members, c, run, start)
	}()
	go func() {
		defer wg.Done()
		pollLeases(stopPolls, members, c, run, kept.ID, maxJump)
	}()

	// The nemesis, on this goroutine: kill the leader, then pause it, and
	// so on, until every expiring lease is gone (and -cluster.duration
	// passed), each fault followed by a keep-alive answer.
	rng := rand.New(rand.NewPCG(uint64(seed), 2))
	// Only a failing run gets there: faults delay grants, and each leader
	// change may extend a lease by an election timeout.
	giveUp := start.Add(max(*durationFlag, grantsFor(*durationFlag)+time.Minute))
	faults := 0
	for ; time.Since(start) < *durationFlag || !allGone(run); faults++ {
		if time.Now().After(giveUp) {
			run.errorf("leases not all expired %v after the start", time.Since(start).Round(time.Second))
			break
		}
		time.Sleep(300*time.Millisecond + time.Duration(rng.Int64N(int64(700*time.Millisecond))))
		leader, term := findLeader(t, c)
		run.mu.Lock()
		run.faulted = leader
		run.mu.Unlock()
		var what string
		kind := "kill"
		if faults%2 == 0 {
			// The killed leader stays down until the others elect a
			// leader among themselves, or, every other time, comes
			// back at once.
			killed := time.Now()
			if err = leader.Kill(); err == nil {
				if faults%4 == 0 {
					findLeader(t, c)
				} else {
					kind = "kill, restart at once"
				}
				what = fmt.Sprintf("kill -9 %s for %v", leader.Name(), time.Since(killed).Round(time.Millisecond))
				err = restart(ctx, c, leader)
			}
		} else {
			// Until the others elect a leader among themselves (findLeader
			// asks the live members only): longer than the election
			// timeout, and a leader change each time.
			kind = "pause"
			paused := time.Now()
			if err = leader.Pause(); err == nil {
				findLeader(t, c)
				what = fmt.Sprintf("pause %s for %v", leader.Name(), time.Since(paused).Round(time.Millisecond))
				err = leader.Resume()
			}
		}
		run.mu.Lock()
		run.faulted = nil
		run.mu.Unlock()
		if err != nil {
			cancelPolls()
			wg.Wait()
			t.Fatalf("fault %d (%s): %v", faults+1, what, err)
		}
		after, afterTerm := findLeader(t, c)
		elected := time.Now()
		for !run.kaSince(elected) && time.Since(elected) < keptTTL*time.Second {
			time.Sleep(50 * time.Millisecond)
		}
		if !run.kaSince(elected) {
			run.errorf("fault %d (%s): no keep-alive answer in %ds after %s was elected in term %d", faults+1, what, keptTTL, after.Name(), afterTerm)
		}
		t.Logf("fault %d, %s leader: %s (leader was %s, term %d); %s leads in term %d; keep-alive answered %v after",
			faults+1, kind, what, leader.Name(), term, after.Name(), afterTerm, time.Since(elected).Round(time.Millisecond))
	}
	cancelPolls()
	wg.Wait()
	t.Logf("%d faults in %v", faults, time.Since(start).Round(time.Millisecond))

	// The kept lease is there, and so is its key; the keep-alive stream is
	// still open.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if ttl, err := all.TimeToLive(fctx, kept.ID); err != nil || ttl.TTL <= 0 {
		run.errorf("kept lease at the end: TTL %v, error %v", ttl, err)
	}
	if resp, err := all.Get(fctx, "lease/kept"); err != nil || len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != kept.ID {
		run.errorf("kept lease's key at the end: %v, error %v", resp, err)
	}
	run.mu.Lock()
	closed, kas, gets := run.kaClosed, len(run.kaTimes), run.keyGets
	run.mu.Unlock()
	if !closed.IsZero() {
		run.errorf("the KeepAlive channel closed %v after the start", closed.Sub(start).Round(time.Millisecond))
	}
	stopKA()
	<-kaDone
	t.Logf("kept lease: %d keep-alive answers, its key read %d times", kas, gets)

	_, endTerm := findLeader(t, c)
	checkExpiries(fctx, t, c, all, run, start, endTerm)
	run.mu.Lock()
	defer run.mu.Unlock()
	report(t, "leases", run.errs)
}

// grantsFor is how long leases are granted for, in a run of d: at least
// len(expiringTTLs) grants, and in a longer run until the last can expire
// before d ends.
func grantsFor(d time.Duration) time.Duration {
	return max(d-16*time.Second, time.Duration(len(expiringTTLs)-1)*leaseGrantGap)
}

// grantLeases grants the expiring leases, one every leaseGrantGap, each
// with a key attached.
func grantLeases(ctx context.Context, members []*clientv3.Client, c *testmember.Cluster, run *leaseRun, start time.Time) {
	try := 0
	at, last := start, start
	for i := 0; ctx.Err() == nil; i++ {
		// One leaseGrantGap after the last grant, even when a fault
		// delayed that one: the leases' lives start at different times.
		if i > 0 {
			at = last.Add(leaseGrantGap)
		}
		if i >= len(expiringTTLs) && at.Sub(start) > grantsFor(*durationFlag) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(at)):
		}
		l := &expiringLease{ttl: expiringTTLs[i%len(expiringTTLs)], key: fmt.Sprintf("lease/exp/%03d", i)}
		l.lastTTL = l.ttl
		// A grant or put lost to a fault is tried again (a lease granted
		// without an answer just expires unwatched).
		for ctx.Err() == nil {
			try++
			l.tries++
			gctx, cancel := context.WithTimeout(ctx, 2*leaseOpTimeout)
			l.sent = time.Now()
			resp, err := members[run.pick(c, try)].Grant(gctx, l.ttl)
			l.got = time.Now()
			cancel()
			if err == nil {
				l.id, l.grantTerm = resp.ID, resp.RaftTerm
				last = l.got
				break
			}
			l.lastErr = err
			time.Sleep(100 * time.Millisecond)
		}
		for ctx.Err() == nil && time.Since(l.sent) < time.Duration(l.ttl)*time.Second {
			try++
			l.tries++
			pctx, cancel := context.WithTimeout(ctx, 2*leaseOpTimeout)
			resp, err := members[run.pick(c, try)].Put(pctx, l.key, "expiring", clientv3.WithLease(l.id))
			cancel()
			if err == nil {
				l.keyRev = resp.Header.Revision
				run.mu.Lock()
				run.leases = append(run.leases, l)
				run.mu.Unlock()
				break
			}
			l.lastErr = err
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// allGone reports whether every lease granted expired and no more will be
// granted.
func allGone(run *leaseRun) bool {
	run.mu.Lock()
	defer run.mu.Unlock()
	if len(run.leases) < len(expiringTTLs) {
		return false
	}
	for _, l := range run.leases {
		if l.goneAt.IsZero() {
			return false
		}
	}
	return true
}

// pollLeases reads, every leasePoll, the kept lease's key and the remaining
// TTL of every expiring lease not yet gone, through a member the nemesis is
// not faulting (a different one each time), and checks what it reads.
func pollLeases(ctx context.Context, members []*clientv3.Client, c *testmember.Cluster, run *leaseRun, kept clientv3.LeaseID, maxJump int64) {
	tick := time.NewTicker(leasePoll)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		i := run.pick(c, n)
		run.mu.Lock()
		leases := make([]*expiringLease, 0, len(run.leases))
		for _, l := range run.leases {
			if l.goneAt.IsZero() {
				leases = append(leases, l)
			}
		}
		run.mu.Unlock()
		cli, name := members[i], c.Members[i].Name()

		octx, cancel := context.WithTimeout(ctx, leaseOpTimeout)
		resp, err := cli.Get(octx, "lease/kept")
		cancel()
		if err != nil {
			continue // the member may have just been faulted: next tick
		}
		run.mu.Lock()
		run.keyGets++
		if (len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != kept) && run.keyLost == 0 {
			run.errs = append(run.errs, fmt.Sprintf("%s at revision %d: the kept lease's key: %v", name, resp.Header.Revision, resp.Kvs))
			run.keyLost = resp.Header.Revision
		}
		run.mu.Unlock()
		for _, l := range leases {
			sent := time.Now()
			octx, cancel := context.WithTimeout(ctx, leaseOpTimeout)
			ttl, err := cli.TimeToLive(octx, l.id)
			got := time.Now()
			cancel()
			if err != nil {
				break
			}
			run.mu.Lock()
			l.polls++
			switch {
			case ttl.TTL == -1:
				l.goneAt, l.goneTerm = got, ttl.RaftTerm
				if early := l.sent.Add(time.Duration(l.ttl) * time.Second); got.Before(early) {
					run.errs = append(run.errs, fmt.Sprintf("lease %s (TTL %ds): gone %v after its grant was sent, earlier than its TTL (%s)",
						l.key, l.ttl, got.Sub(l.sent).Round(time.Millisecond), name))
				}
			default:
				if jump := ttl.TTL - l.lastTTL; jump > maxJump {
					run.errs = append(run.errs, fmt.Sprintf("lease %s (TTL %ds): remaining TTL went up from %ds to %ds, %v after its grant (%s, term %d)",
						l.key, l.ttl, l.lastTTL, ttl.TTL, sent.Sub(l.sent).Round(time.Millisecond), name, ttl.RaftTerm))
				}
				l.maxJump = max(l.maxJump, ttl.TTL-l.lastTTL)
				l.lastTTL, l.lastSent = ttl.TTL, sent
			}
			run.mu.Unlock()
		}
	}
}

// checkExpiries checks when each expiring lease was seen gone and that its
// key went at the same revision on every member.
func checkExpiries(ctx context.Context, t *testing.T, c *testmember.Cluster, cli *clientv3.Client, run *leaseRun, start time.Time, endTerm uint64) {
	t.Helper()
	run.mu.Lock()
	leases := run.leases
	run.mu.Unlock()
	for _, l := range leases {
		gone := !l.goneAt.IsZero()
		if !gone {
			run.errorf("lease %s (TTL %ds) not seen gone; last seen with %ds left %v after its grant",
				l.key, l.ttl, l.lastTTL, l.lastSent.Sub(l.sent).Round(time.Millisecond))
			l.goneTerm = endTerm
		}
		// Each leader elected after the grant may have added up to an
		// election timeout; a leader is elected at most once a term.
		changes := l.goneTerm - l.grantTerm
		late := l.got.Add(time.Duration(l.ttl)*time.Second + time.Duration(changes)*electionTimeout + leaseExpirySlack)
		if l.lastSent.After(late) {
			run.errorf("lease %s (TTL %ds): still there %v after its grant returned, later than TTL + %d election timeouts + %v",
				l.key, l.ttl, l.lastSent.Sub(l.got).Round(time.Millisecond), changes, leaseExpirySlack)
		}
		if !gone {
			continue
		}
		l.deletedRev = deletionRev(ctx, t, cli, l)
		if l.tries > 2 {
			t.Logf("lease %s: granted and put in %d tries, the last error: %v", l.key, l.tries, l.lastErr)
		}
		t.Logf("lease %s: TTL %ds granted at %v (term %d, answered in %v); last seen with %ds left at +%v, gone by +%v (term %d, deleted at revision %d); %d polls, TTL rose at most %ds; seen %v after TTL + %d election timeouts (slack %v)",
			l.key, l.ttl, l.sent.Sub(start).Round(time.Millisecond), l.grantTerm, l.got.Sub(l.sent).Round(time.Millisecond),
			l.lastTTL, l.lastSent.Sub(l.sent).Round(time.Millisecond), l.goneAt.Sub(l.sent).Round(time.Millisecond), l.goneTerm, l.deletedRev, l.polls, l.maxJump,
			(l.lastSent.Sub(late) + leaseExpirySlack).Round(time.Millisecond), changes, leaseExpirySlack)
	}
	if len(leases) < len(expiringTTLs) {
		run.errorf("only %d expiring leases granted, want %d", len(leases), len(expiringTTLs))
	}
	for _, m := range c.Members {
		mcli := client(t, m.Endpoint())
		for _, l := range leases {
			if l.deletedRev == 0 {
				continue
			}
			if err := waitRevision(ctx, mcli, l.deletedRev); err != nil {
				run.errorf("%s: %v", m.Name(), err)
				break
			}
			before, err := mcli.Get(ctx, l.key, clientv3.WithRev(l.deletedRev-1), clientv3.WithSerializable())
			if err == nil && (len(before.Kvs) != 1 || clientv3.LeaseID(before.Kvs[0].Lease) != l.id) {
				run.errorf("%s: lease %s's key at revision %d, before its deletion: %v", m.Name(), l.key, l.deletedRev-1, before.Kvs)
			}
			at, err2 := mcli.Get(ctx, l.key, clientv3.WithRev(l.deletedRev), clientv3.WithSerializable())
			if err2 == nil && len(at.Kvs) != 0 {
				run.errorf("%s: lease %s's key at revision %d, its deletion's: %v", m.Name(), l.key, l.deletedRev, at.Kvs)
			}
			if err := errors.Join(err, err2); err != nil {
				run.errorf("%s: read lease %s's key around revision %d: %v", m.Name(), l.key, l.deletedRev, err)
			}
		}
	}
}

// deletionRev returns the revision at which l's key was deleted: the first
// event after its put must be that delete.
func deletionRev(ctx context.Context, t *testing.T, cli *clientv3.Client, l *expiringLease) int64 {
	t.Helper()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range cli.Watch(wctx, l.key, clientv3.WithRev(l.keyRev+1)) {
		if err := resp.Err(); err != nil {
			t.Fatalf("watch %s: %v", l.key, err)
		}
		for _, ev := range resp.Events {
			if ev.Type != mvccpb.DELETE {
				t.Fatalf("%s: after its put at revision %d, %v at revision %d", l.key, l.keyRev, ev.Type, ev.Kv.ModRevision)
			}
			return ev.Kv.ModRevision
		}
	}
	t.Fatalf("watch %s: %v", l.key, ctx.Err())
	return 0
}

// TestLeaseTimeAcrossWholeClusterRestart kills -9 every member a few seconds
// after a grant and starts them again: whichever leads next loads the
// leases from what it persisted (the grant: the full TTL). The time since
// then, and the time the members were down, passed for the lease too: its
// remaining TTL after the restart must not have risen back (but for a new
// leader's extension, one election timeout), nor fallen below what its age
// leaves. (Each leader elected since may add its election timeout; the
// terms that passed bound how many there were.)
func TestLeaseTimeAcrossWholeClusterRestart(t *testing.T) {
	const ttl = 30
	ctx := t.Context()
	c := startCluster(t, 3)
	cli := client(t, c.Endpoints()...)
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	sent := time.Now()
	l, err := cli.Grant(gctx, ttl)
	granted := time.Now()
	cancel()
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	time.Sleep(3 * time.Second)
	for _, m := range c.Members {
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	findLeader(t, c)
	var left int64
	for {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		asked := time.Now()
		resp, err := cli.TimeToLive(qctx, l.ID)
		cancel()
		if err == nil {
			left = resp.TTL
			// Reported in whole seconds, rounded down.
			leaders := int64(resp.ResponseHeader.RaftTerm - l.ResponseHeader.RaftTerm)
			most := ttl - int64(asked.Sub(granted).Seconds()) + leaders*int64(math.Ceil(electionTimeout.Seconds()))
			least := ttl - int64(math.Ceil(time.Since(sent).Seconds())) - 1
			if left > most || left < least {
				t.Errorf("lease granted %v ago (down 2s of it, %d terms since) has %ds left, want %d..%d", asked.Sub(granted).Round(time.Millisecond), leaders, left, least, most)
			}
			break
		}
		if ctx.Err() != nil || time.Since(granted) > 25*time.Second {
			t.Fatalf("time to live after the restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%ds left %v after the grant", left, time.Since(granted).Round(time.Millisecond))
}
