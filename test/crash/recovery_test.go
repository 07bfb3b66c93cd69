package crash

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// startupKills is how many times (at least) a recovery test kills a
// starting member.
func startupKills() int {
	if testing.Short() {
		return 3
	}
	return 6
}

// startAttempt is one start of a member that was killed with SIGKILL at a
// chosen moment after it was launched.
type startAttempt struct {
	after     time.Duration // from the launch to the kill
	opened    time.Duration // from the launch to raft's "newRaft" line (storage open); 0 if none before the kill
	triggered time.Duration // from the launch to the plan's trigger; 0 if none
	ready     time.Duration // from the launch to its first linearizable read; 0 if none before the kill
	log       string        // the process's log at the kill
	files     []string      // partial snapshot images in its snap dir at the kill
}

// killPlan says when to kill a starting member: delay after its launch, or,
// with a trigger, delay after the trigger first holds of its log and the
// partial snapshot images in its snap dir (if the trigger never holds, the
// kill comes once the member is ready, or 30s after the launch).
type killPlan struct {
	delay   time.Duration
	trigger func(log string, files []string) bool
}

// killWhileStarting launches m, kills it with SIGKILL when plan says, and
// tells what the member had done by then. It watches the member's log and
// snap dir every 2ms, and a probe asks the member for a linearizable read
// every few milliseconds, to learn whether it was ready.
func killWhileStarting(ctx context.Context, m *testmember.Member, plan killPlan) (startAttempt, error) {
	// Images left by an earlier process are removed once the store is
	// open: they are not this start's.
	snapGlob := filepath.Join(m.DataDir(), "snap", "*.tmp")
	stale, _ := filepath.Glob(snapGlob)
	launched := time.Now()
	if err := m.Launch(); err != nil {
		return startAttempt{}, err
	}
	cli, err := m.Client()
	if err != nil {
		return startAttempt{}, err
	}
	defer cli.Close()
	var readyAt atomic.Int64
	pctx, stopProbe := context.WithCancel(ctx)
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		for pctx.Err() == nil {
			rctx, cancel := context.WithTimeout(pctx, 100*time.Millisecond)
			_, err := cli.Get(rctx, "crash/barrier")
			cancel()
			if err == nil {
				readyAt.Store(int64(time.Since(launched)))
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var a startAttempt
	killAt := launched.Add(plan.delay)
	if plan.trigger != nil {
		killAt = launched.Add(30 * time.Second)
	}
	for {
		now := time.Now()
		b, _ := os.ReadFile(m.LogPath())
		files, _ := filepath.Glob(snapGlob)
		files = slices.DeleteFunc(files, func(f string) bool { return slices.Contains(stale, f) })
		a.log, a.files = string(b), files
		if a.opened == 0 && strings.Contains(a.log, "newRaft") {
			a.opened = max(now.Sub(launched), time.Nanosecond)
		}
		if plan.trigger != nil && a.triggered == 0 && plan.trigger(a.log, files) {
			a.triggered = max(now.Sub(launched), time.Nanosecond)
			killAt = now.Add(plan.delay)
		}
		if !now.Before(killAt) || (plan.trigger != nil && a.triggered == 0 && readyAt.Load() > 0) {
			break // (a member that is ready without the trigger will not see it)
		}
		time.Sleep(min(2*time.Millisecond, time.Until(killAt)))
	}
	killErr := m.Kill()
	a.after = time.Since(launched)
	stopProbe()
	<-probeDone
	if killErr != nil {
		return startAttempt{}, killErr
	}
	a.ready = time.Duration(readyAt.Load())
	return a, nil
}

// randBelow returns a random duration in [0, d).
func randBelow(rng *rand.Rand, d time.Duration) time.Duration {
	return time.Duration(rng.Int64N(int64(max(d, time.Millisecond))))
}

// newRaftLine is raft's log line when the node starts on its stored log:
// entries from applied+1 to commit are replayed.
var newRaftLine = regexp.MustCompile(`newRaft [0-9a-f]+ \[peers: \[[^\]]*\], term: \d+, commit: (\d+), applied: (\d+), lastindex: (\d+)`)

// The replay test's data: replayPrefixes ranges of replayKeys keys each,
// written by txns of replayTxnKeys puts.
const (
	replayPrefixes = 12
	replayKeys     = 4000
	replayTxnKeys  = 100
	replayValue    = 400 // bytes: ~20 MiB of values in all, all in the WAL
)

func replayPrefix(p int) string { return fmt.Sprintf("crash/replay/%02d/", p) }

// TestKillNineDuringReplay makes a member's start long, and kills it again and
// again while it starts. It fills a member with ~20 MiB of keys, in ranges of
// its own, which sit in Pebble's write-ahead log; then deletes each range
// with one request, all at once, and kills the member as soon as the first
// delete is acknowledged: the others are committed, but their apply (a
// tombstone per key) is still going on, so the member restarts with a long
// log tail to apply again. Each start is killed at a random moment: while
// Pebble replays its WAL (before raft's "newRaft" line), or while the
// committed entries are applied again (the line says applied < commit, and
// the member does not answer a linearizable read yet). Finally the member
// starts, and the checks read back every acknowledged put at its revision;
// a range whose delete was acknowledged is empty, and one whose delete was
// not is empty or whole, never in between.
func TestKillNineDuringReplay(t *testing.T) { sessions(t, killNineDuringReplay) }

func killNineDuringReplay(t *testing.T) {
	rng, seed := newRNG(t)
	ctx := t.Context()
	m := testmember.New(t, plinthBin)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cli, err := m.Client()
	if err != nil {
		t.Fatal(err)
	}

	// Fill: each prefix by a writer of its own, txn by txn. filled[p] is
	// the revision of the prefix's last txn, when every key of it is
	// written.
	filled := make([]int64, replayPrefixes)
	fillErrs := make(chan error, replayPrefixes)
	var wg sync.WaitGroup
	for p := range replayPrefixes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := 0; first < replayKeys; first += replayTxnKeys {
				var ops []clientv3.Op
				for k := first; k < first+replayTxnKeys; k++ {
					key := fmt.Sprintf("%s%05d", replayPrefix(p), k)
					ops = append(ops, clientv3.OpPut(key, bulkValue(key, replayValue, uint64(p))))
				}
				resp, err := cli.Txn(ctx).Then(ops...).Commit()
				if err != nil {
					fillErrs <- fmt.Errorf("fill %s: %w", replayPrefix(p), err)
					return
				}
				filled[p] = resp.Header.Revision
			}
		}()
	}
	wg.Wait()
	close(fillErrs)
	for err := range fillErrs {
		t.Fatal(err)
	}

	// Delete every range at once; kill at the first answer.
	deleted := make([]int64, replayPrefixes) // the acknowledged delete's revision
	first := make(chan struct{}, replayPrefixes)
	dctx, stopDeletes := context.WithCancel(ctx)
	for p := range replayPrefixes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := cli.Delete(dctx, replayPrefix(p), clientv3.WithPrefix())
			if err == nil {
				deleted[p] = resp.Header.Revision
				if resp.Deleted != replayKeys {
					t.Errorf("delete %s deleted %d keys, want %d", replayPrefix(p), resp.Deleted, replayKeys)
				}
			}
			first <- struct{}{}
		}()
	}
	<-first
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	stopDeletes()
	wg.Wait()
	_ = cli.Close()
	acked := 0
	for _, rev := range deleted {
		if rev > 0 {
			acked++
		}
	}
	t.Logf("killed with %d of %d range deletes acknowledged", acked, replayPrefixes)

	// The first start has the deletes' entries to apply again. Each start
	// that begins behind (applied < commit) is killed a random moment
	// after raft starts; the kill stopped the replay if the next start
	// still begins behind (the applied index is written with each apply).
	// The other starts are killed at a random moment before raft started
	// the last time (while Pebble opens the store and replays its WAL), or
	// before the member was ready.
	var opening, replaying, waiting, readyKills int
	window, lastOpened := 2*time.Second, 100*time.Millisecond
	behindBefore := true // the last start (or the kill under load) left the member behind
	for i := 1; i <= startupKills() || opening == 0 || replaying == 0; i++ {
		if i > 4*startupKills() {
			t.Fatalf("(seed %d) after %d kills of the starting member, %d landed before raft started (Pebble replaying its WAL) and %d while it applied its log again; want at least one of each", seed, i-1, opening, replaying)
		}
		if !behindBefore && replaying == 0 {
			t.Fatalf("(seed %d) the member applied its log tail again before a kill stopped it", seed)
		}
		var plan killPlan
		switch {
		case behindBefore && (replaying == 0 || i%2 == 1):
			plan = killPlan{delay: randBelow(rng, 100*time.Millisecond), trigger: func(log string, _ []string) bool { return strings.Contains(log, "newRaft") }}
		case i%2 == 0:
			plan = killPlan{delay: randBelow(rng, lastOpened)}
		default:
			plan = killPlan{delay: randBelow(rng, window)}
		}
		a, err := killWhileStarting(ctx, m, plan)
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		sub := newRaftLine.FindStringSubmatch(a.log)
		behind := sub != nil && sub[1] != sub[2]
		if behindBefore && behind && i > 1 {
			replaying++
			t.Logf("start %d begins behind too: start %d was killed while it applied its log again", i, i-1)
		}
		var phase string
		switch {
		case a.ready > 0:
			phase = fmt.Sprintf("ready after %v", a.ready.Round(time.Millisecond))
			readyKills++
		case behind:
			phase = fmt.Sprintf("raft started %v after the launch with applied %s < commit %s, applying the entries between again", a.opened.Round(time.Millisecond), sub[2], sub[1])
		case sub != nil:
			phase = "raft started with nothing to apply again, not ready yet"
			waiting++
		default:
			phase = "opening storage (Pebble replaying its WAL)"
			opening++
		}
		t.Logf("start %d: killed after %v: %s", i, a.after.Round(time.Millisecond), phase)
		behindBefore = behind && a.ready == 0
		if a.opened > 0 {
			lastOpened = a.opened
		}
		if a.ready > 0 {
			window = a.ready
		}
	}

	restart := time.Now()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(restart)
	if cli, err = m.Client(); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if sub := newRaftLine.FindStringSubmatch(mustLog(t, m)); sub != nil {
		t.Logf("the last start began with applied %s, commit %s, and was ready in %v", sub[2], sub[1], ready.Round(time.Millisecond))
	}

	var errs []string
	for p := range replayPrefixes {
		// Filled: every key, at the revision of the prefix's last txn.
		full, err := cli.Get(ctx, replayPrefix(p), clientv3.WithPrefix(), clientv3.WithRev(filled[p]), clientv3.WithSerializable())
		if err != nil {
			t.Fatal(err)
		}
		if len(full.Kvs) != replayKeys {
			errs = append(errs, fmt.Sprintf("LOST: %s holds %d keys at revision %d, when its last fill txn was acknowledged; want %d", replayPrefix(p), len(full.Kvs), filled[p], replayKeys))
		}
		for _, kv := range full.Kvs {
			if want := bulkValue(string(kv.Key), replayValue, uint64(p)); string(kv.Value) != want || kv.Version != 1 {
				errs = append(errs, fmt.Sprintf("%s at revision %d: version %d, value %.40q..., want version 1, %.40q...", kv.Key, filled[p], kv.Version, kv.Value, want))
				break
			}
		}
		now, err := cli.Get(ctx, replayPrefix(p), clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case deleted[p] > 0 && now.Count != 0:
			errs = append(errs, fmt.Sprintf("LOST: the delete of %s was acknowledged at revision %d, but it holds %d keys", replayPrefix(p), deleted[p], now.Count))
		case now.Count != 0 && now.Count != replayKeys:
			errs = append(errs, fmt.Sprintf("TORN: the unacknowledged delete of %s left %d of its %d keys", replayPrefix(p), now.Count, replayKeys))
		}
		if deleted[p] > 0 {
			at, err := cli.Get(ctx, replayPrefix(p), clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(deleted[p]), clientv3.WithSerializable())
			if err != nil {
				t.Fatal(err)
			}
			if at.Count != 0 {
				errs = append(errs, fmt.Sprintf("%s holds %d keys at revision %d, where its delete was acknowledged", replayPrefix(p), at.Count, deleted[p]))
			}
		}
	}
	if len(errs) > 0 {
		t.Fatalf("(seed %d) after %d kills while opening storage and %d while applying the log again:\n%s", seed, opening, replaying, strings.Join(errs, "\n"))
	}
	t.Logf("%d ranges of %d keys and %d acknowledged deletes checked after %d kills while opening storage, %d while applying the log again, %d before an election, %d once ready",
		replayPrefixes, replayKeys, acked, opening, replaying, waiting, readyKills)
}

func mustLog(t *testing.T, m *testmember.Member) string {
	t.Helper()
	log, err := m.Log()
	if err != nil {
		t.Fatal(err)
	}
	return log
}

// newRNG returns the test's random source, seeded by -crash.seed or the
// clock, and the seed (logged, to rerun a failure).
func newRNG(t *testing.T) (*rand.Rand, int64) {
	seed := *seedFlag
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (rerun with -crash.seed=%d)", seed, seed)
	return rand.New(rand.NewPCG(uint64(seed), 0)), seed
}

// snapshotCount is the --snapshot-count of the snapshot test's cluster: the
// log keeps this many entries and is truncated every 2x, so a few hundred
// writes push a stopped member past the log.
const snapshotCount = 100

// TestKillNineDuringSnapshotInstall kills a member again and again while it
// catches up from a Raft snapshot. In a cluster of three, a follower is
// killed, and the others take ~9 MiB of puts, far more entries than their
// log keeps: the follower can only catch up from a snapshot of the leader's
// state. It is started and killed at a random moment, again and again: while
// it receives the image (a partial image file is in its snap dir), once it
// received it but had not installed it (its log says "received a snapshot"
// but not "installed a snapshot"), or before either. After a start that did
// install it (or was ready without one), it is started and checked, and more
// puts push it past the log again. Finally it starts and is checked. The
// check waits until it applied the leader's revision; then its serializable
// reads must hold every acknowledged put at its revision, and the same keys,
// values and revisions as the leader.
func TestKillNineDuringSnapshotInstall(t *testing.T) { sessions(t, killNineDuringSnapshotInstall) }

func killNineDuringSnapshotInstall(t *testing.T) {
	rng, seed := newRNG(t)
	ctx := t.Context()
	c := testmember.NewCluster(t, plinthBin, 3, "--snapshot-count", fmt.Sprint(snapshotCount))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	leader, _, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var f *testmember.Member
	for _, m := range c.Members {
		if m != leader {
			f = m
			break
		}
	}
	if err := f.Kill(); err != nil {
		t.Fatal(err)
	}
	lcli, err := leader.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer lcli.Close()
	var puts []ackedPut
	// write puts at least n values of size bytes, through the leader.
	round := 0
	write := func(n, size int) {
		t.Helper()
		round++
		lctx, stop := context.WithCancel(ctx)
		b := startBulk(lctx, lcli, fmt.Sprintf("crash/snap/%02d", round), 8, 0, size)
		for {
			if p, _ := b.progress(); p >= n {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		stop()
		b.wait()
		if b.err != nil {
			t.Fatalf("puts through the leader %s: %v", leader.Name(), b.err)
		}
		puts = append(puts, b.puts()...)
	}
	write(300, 32<<10)

	// Each start is killed a random moment after the first sign of a
	// snapshot: a partial image in the snap dir, or "received a snapshot"
	// in the log.
	snapshotArrives := func(log string, files []string) bool {
		return len(files) > 0 || strings.Contains(log, "received a snapshot")
	}
	var before, receiving, received, installed, checks int
	for i := 1; i <= startupKills() || receiving+received == 0; i++ {
		if i > 4*startupKills() {
			t.Fatalf("(seed %d) after %d kills of the follower catching up, none landed while it received or installed the snapshot (%d before, %d after it installed one)", seed, i-1, before, installed)
		}
		a, err := killWhileStarting(ctx, f, killPlan{delay: randBelow(rng, 100*time.Millisecond), trigger: snapshotArrives})
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		var phase string
		switch {
		case strings.Contains(a.log, "installed a snapshot"):
			phase = "after it installed the snapshot"
			installed++
		case strings.Contains(a.log, "received a snapshot"):
			phase = "after it received the snapshot, before it installed it"
			received++
		case len(a.files) > 0:
			phase = fmt.Sprintf("while it received the snapshot (%s)", filepath.Base(a.files[0]))
			receiving++
		default:
			phase = "before a snapshot arrived"
			before++
		}
		if a.triggered > 0 {
			phase += fmt.Sprintf("; the snapshot began to arrive %v after the launch", a.triggered.Round(time.Millisecond))
		}
		if a.ready > 0 {
			phase += fmt.Sprintf("; ready after %v", a.ready.Round(time.Millisecond))
		}
		t.Logf("start %d: killed after %v: %s", i, a.after.Round(time.Millisecond), phase)
		if strings.Contains(a.log, "installed a snapshot") || a.ready > 0 {
			// It has (or had) the snapshot's state: check it now, as
			// the next snapshot would replace it. Then push it past the
			// log again, so that the next start needs a snapshot too.
			checks++
			checkFollower(t, f, lcli, puts, seed, fmt.Sprintf("after start %d", i))
			if err := f.Kill(); err != nil {
				t.Fatal(err)
			}
			write(3*snapshotCount, 100)
		}
	}

	checkFollower(t, f, lcli, puts, seed, fmt.Sprintf("after %d kills while it received a snapshot, %d after it received one but before it installed it", receiving, received))
	t.Logf("%d acknowledged puts held by %s after %d kills while it received a snapshot, %d after it received one but before it installed it, %d before one arrived, %d after it installed one; %d checks of its state",
		len(puts), f.Name(), receiving, received, before, installed, checks)
}

// checkFollower starts f, waits until it applied the leader's revision, and
// checks its state with serializable reads: every acknowledged put at its
// revision, and the same keys, values, versions and revisions as the leader.
func checkFollower(t *testing.T, f *testmember.Member, lcli *clientv3.Client, puts []ackedPut, seed int64, after string) {
	t.Helper()
	ctx := t.Context()
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	want, err := lcli.Get(ctx, "crash/snap/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	fcli, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer fcli.Close()
	if err := waitRevision(ctx, fcli, want.Header.Revision); err != nil {
		t.Fatalf("%s: %v", f.Name(), err)
	}
	errs := checkPuts(ctx, fcli, puts, 0, nil)
	got, err := fcli.Get(ctx, "crash/snap/", clientv3.WithPrefix(), clientv3.WithRev(want.Header.Revision), clientv3.WithSerializable())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != len(want.Kvs) {
		errs = append(errs, fmt.Sprintf("%s holds %d keys at revision %d, the leader %d", f.Name(), len(got.Kvs), want.Header.Revision, len(want.Kvs)))
	} else {
		for i, kv := range got.Kvs {
			w := want.Kvs[i]
			if string(kv.Key) != string(w.Key) || string(kv.Value) != string(w.Value) || kv.Version != w.Version ||
				kv.CreateRevision != w.CreateRevision || kv.ModRevision != w.ModRevision || kv.Lease != w.Lease {
				errs = append(errs, fmt.Sprintf("on %s %s version %d create %d mod %d; on the leader %s version %d create %d mod %d",
					f.Name(), kv.Key, kv.Version, kv.CreateRevision, kv.ModRevision, w.Key, w.Version, w.CreateRevision, w.ModRevision))
				break
			}
		}
	}
	if len(errs) > 0 {
		t.Fatalf("(seed %d) %s, %s at revision %d:\n%s", seed, after, f.Name(), want.Header.Revision, strings.Join(errs, "\n"))
	}
}

// The compaction test's data: compactWriters writers, each putting all its
// compactKeys keys in one txn, compactVersions times a round.
const (
	compactWriters  = 16
	compactKeys     = 100
	compactVersions = 12
)

func compactPrefix(w int) string { return fmt.Sprintf("crash/compact/%02d/", w) }

func compactValue(w, n, k int) string {
	return fmt.Sprintf("%s%03d version %d of writer %d", compactPrefix(w), k, n, w)
}

// compactTxn is an acknowledged txn of the compaction test: writer w's n-th
// version (from 1) of all its keys, at rev.
type compactTxn struct {
	w, n int
	rev  int64
}

// TestKillNineDuringCompaction kills a member while it compacts a long
// history, and again while it starts and resumes the compaction. Each round
// writes compactVersions new versions of 1,600 keys, asks for a physical
// compaction at the revision of the middle version, and kills the member a
// random moment later: before the compaction was applied, while it deletes the old
// versions, or after. The member is then started and killed at random
// moments, and finally started. The checks read every acknowledged txn back:
// below the newest compaction the member applied (acknowledged, or found
// applied), a read fails as compacted; at or above it, each key holds the
// version the txn wrote, with its revision and version number.
func TestKillNineDuringCompaction(t *testing.T) { sessions(t, killNineDuringCompaction) }

func killNineDuringCompaction(t *testing.T) {
	rng, seed := newRNG(t)
	ctx := t.Context()
	m := testmember.New(t, plinthBin)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	rounds := 2
	var txns []compactTxn
	var floor int64 // the newest compaction known applied
	versions := 0
	var inFlight, finished int
	// The kill comes a random delay below window after the compaction
	// is asked for; window follows the time the last one took.
	window := 200 * time.Millisecond
	for round := 1; round <= rounds || inFlight == 0; round++ {
		if round > 3*rounds {
			t.Fatalf("(seed %d) in %d rounds, no kill landed before the physical compaction answered", seed, round-1)
		}
		cli, err := m.Client()
		if err != nil {
			t.Fatal(err)
		}
		// Versions up to the middle of the round, then the rest: the
		// compaction is at the middle, so that reads at its revision
		// need versions it must keep in the history.
		var mu sync.Mutex
		writeVersions := func(from, to int) {
			var wg sync.WaitGroup
			errs := make(chan error, compactWriters)
			for w := range compactWriters {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := from; n <= to; n++ {
						ops := make([]clientv3.Op, compactKeys)
						for k := range compactKeys {
							ops[k] = clientv3.OpPut(fmt.Sprintf("%s%03d", compactPrefix(w), k), compactValue(w, n, k))
						}
						resp, err := cli.Txn(ctx).Then(ops...).Commit()
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						txns = append(txns, compactTxn{w: w, n: n, rev: resp.Header.Revision})
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		writeVersions(versions+1, versions+compactVersions/2)
		resp, err := cli.Get(ctx, "crash/barrier")
		if err != nil {
			t.Fatal(err)
		}
		rev := resp.Header.Revision
		writeVersions(versions+compactVersions/2+1, versions+compactVersions)
		versions += compactVersions

		after := time.Duration(rng.Int64N(int64(window)))
		asked := time.Now()
		type answer struct {
			err  error
			took time.Duration
		}
		answered := make(chan answer, 1)
		go func() {
			_, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical())
			answered <- answer{err, time.Since(asked)}
		}()
		time.Sleep(after)
		var phase string
		select {
		case a := <-answered:
			if a.err != nil {
				t.Fatalf("round %d: compact at %d: %v", round, rev, a.err)
			}
			phase = fmt.Sprintf("after the compaction finished (in %v)", a.took.Round(time.Millisecond))
			window = max(a.took, 20*time.Millisecond)
			floor = rev
			finished++
		default:
			phase = "while the compaction was not yet answered"
			inFlight++
		}
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = cli.Close()
		t.Logf("round %d: %d versions of %d keys; compacting at %d; killed after %v, %s", round, versions, compactWriters*compactKeys, rev, after.Round(time.Millisecond), phase)

		// Kill it while it starts, and resumes the compaction.
		// (Compaction resumes once the store is open: a short delay
		// after raft starts.)
		for i := 1; i <= startupKills()/3; i++ {
			plan := killPlan{delay: randBelow(rng, window), trigger: func(log string, _ []string) bool { return strings.Contains(log, "newRaft") }}
			if _, err := killWhileStarting(ctx, m, plan); err != nil {
				t.Fatalf("round %d, start %d: %v", round, i, err)
			}
		}
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if cli, err = m.Client(); err != nil {
			t.Fatal(err)
		}
		// Was the unanswered compaction applied? Then reads below it fail.
		if floor != rev {
			_, err := cli.Get(ctx, "crash/barrier", clientv3.WithRev(rev-1), clientv3.WithSerializable())
			if errors.Is(err, rpctypes.ErrCompacted) {
				floor = rev
			} else if err != nil {
				t.Fatal(err)
			}
		}
		if errs := checkCompacted(ctx, cli, txns, floor); len(errs) > 0 {
			t.Fatalf("(seed %d) round %d, compacted at %d:\n%s", seed, round, floor, strings.Join(errs, "\n"))
		}
		t.Logf("round %d: %d acknowledged txns checked, compacted at %d", round, len(txns), floor)
		_ = cli.Close()
	}
	t.Logf("%d kills while a compaction was not yet answered, %d after it was", inFlight, finished)
}

// checkCompacted reads every acknowledged txn of the compaction test back at
// its revision, or checks that its revision reads as compacted, and checks
// the keys at the compaction revision itself.
func checkCompacted(ctx context.Context, cli *clientv3.Client, txns []compactTxn, floor int64) []string {
	var mu sync.Mutex
	var errs []string
	errorf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(errs) < 40 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	// The newest txn of each writer at or below the floor: what the floor
	// reads.
	atFloor := make([]compactTxn, compactWriters)
	for _, x := range txns {
		if x.rev <= floor && x.rev > atFloor[x.w].rev {
			atFloor[x.w] = x
		}
	}
	check := func(x compactTxn, rev int64) {
		resp, err := cli.Get(ctx, compactPrefix(x.w), clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithSerializable())
		switch {
		case rev < floor:
			if !errors.Is(err, rpctypes.ErrCompacted) {
				errorf("writer %d at revision %d, below the compaction at %d: a read answered %v, want %v", x.w, rev, floor, err, rpctypes.ErrCompacted)
			}
			return
		case err != nil:
			errorf("writer %d at revision %d: %v", x.w, rev, err)
			return
		case len(resp.Kvs) != compactKeys:
			errorf("LOST: writer %d at revision %d: %d keys, want %d", x.w, rev, len(resp.Kvs), compactKeys)
			return
		}
		for k, kv := range resp.Kvs {
			if string(kv.Value) != compactValue(x.w, x.n, k) || kv.ModRevision != x.rev || kv.Version != int64(x.n) {
				errorf("LOST: writer %d's version %d (revision %d), read at %d: %s version %d mod %d value %q", x.w, x.n, x.rev, rev, kv.Key, kv.Version, kv.ModRevision, kv.Value)
				return
			}
		}
	}
	parallel(len(txns), func(i int) { check(txns[i], txns[i].rev) })
	if floor > 0 {
		parallel(compactWriters, func(w int) {
			if atFloor[w].rev > 0 {
				check(atFloor[w], floor)
			}
		})
	}
	return errs
}
