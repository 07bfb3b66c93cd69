package crash

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
)

// minAckedWrites is the fewest writes each kill cycle must have had
// acknowledged: a member that refused writes after a restart would leave the
// checks nothing to check, and pass them.
const minAckedWrites = 20

// TestKillNine runs a member under concurrent write, read and compaction
// load, kills it with SIGKILL at a random moment, restarts it on the same
// data directory and checks the whole history so far; then again, for
// several cycles. The kill waits, if need be, until the cycle had
// minAckedWrites writes and a read acknowledged; a cycle that has not within
// 30s fails the test (a member that refuses writes or reads after a restart).
//
// Rerun a failure with the seed it logged: go test ./test/crash -crash.seed=N.
// The seed fixes the kill moments and the choices of the load, not the
// timing of the requests, so a rerun is close to, not equal to, the failed run.
func TestKillNine(t *testing.T) { sessions(t, killNine) }

func killNine(t *testing.T) {
	cycles := 10
	if testing.Short() {
		cycles = 3
	}
	rng, seed := newRNG(t)
	ctx := t.Context()

	// A short log, so that kills find it truncated many times over.
	m := testmember.New(t, plinthBin, "--snapshot-count", "200")
	h := newHistory()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cli, err := m.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })

	// The counters start at 0, written like every increment.
	init := &load{cli: cli, h: h}
	for n := 0; n < counters; n++ {
		if o, ok := init.incr(ctx, -1, n, 0, nil); !ok {
			t.Fatalf("init counter %d: %v", n, o.err)
		}
	}

	start := time.Now()
	checkedRev := h.snapshot()[len(h.snapshot())-1].rev
	for cycle := 1; cycle <= cycles; cycle++ {
		before := len(h.snapshot())
		after := 100*time.Millisecond + time.Duration(rng.Int64N(int64(700*time.Millisecond)))
		lctx, stopLoad := context.WithCancel(ctx)
		loadStart := time.Now()
		l := startLoad(lctx, cli, h, cycle, rng.Uint64(), checkedRev)
		time.Sleep(after)
		if err := l.waitActive(ctx, minAckedWrites); err != nil {
			stopLoad()
			l.wait()
			t.Fatalf("cycle %d (seed %d): the member did not take the load: %v", cycle, seed, err)
		}
		killErr := m.Kill()
		stopLoad()
		l.wait()
		_ = cli.Close()
		if killErr != nil {
			t.Fatalf("cycle %d: %v", cycle, killErr)
		}
		var acked, unacked, reads, compactions int
		for _, o := range h.snapshot()[before:] {
			switch {
			case o.kind == opRead:
				reads++
			case o.kind == opCompact && o.acked:
				compactions++
			case o.kind == opCompact:
			case o.acked:
				acked++
			default:
				unacked++
			}
		}
		readsFailed := l.readsFailed.Load()
		t.Logf("cycle %d: killed after %v: %d writes acknowledged, %d unacknowledged; %d reads answered, %d failed; %d compactions acknowledged",
			cycle, time.Since(loadStart).Round(time.Millisecond), acked, unacked, reads, readsFailed, compactions)
		// The history must agree with what waitActive saw.
		if acked < minAckedWrites || reads == 0 {
			t.Fatalf("cycle %d (seed %d): %d writes and %d reads acknowledged before the kill, want at least %d and 1", cycle, seed, acked, reads, minAckedWrites)
		}

		restart := time.Now()
		if err := m.Start(ctx); err != nil {
			t.Fatalf("cycle %d: restart: %v", cycle, err)
		}
		ready := time.Since(restart)
		if cli, err = m.Client(); err != nil {
			t.Fatal(err)
		}
		c := &checker{cli: cli, h: h}
		checkStart := time.Now()
		res, errs := c.verify(ctx)
		t.Logf("cycle %d: restarted in %v; revision %d, compacted below %d (%d reads below it failed as compacted, as they must), counters %v, of all unacknowledged ops so far %d found applied, %d not (others undecidable: deletes, d keys since deleted, ops overwritten below the compaction); checked %d ops in %v",
			cycle, ready.Round(time.Millisecond), res.rev, res.floor, res.compacted, res.counters, res.applied, res.notApplied, res.acked+res.unacked, time.Since(checkStart).Round(time.Millisecond))
		if len(errs) > 0 {
			const show = 40
			more := ""
			if len(errs) > show {
				more = "\n..."
				errs = errs[:show]
			}
			t.Fatalf("cycle %d (seed %d): %d violations after the restart:\n%s%s", cycle, seed, len(errs), strings.Join(errs, "\n"), more)
		}
		checkedRev = res.rev
	}
	reads := map[string]int{}
	for _, o := range h.snapshot() {
		if o.kind == opRead {
			reads[o.keys[0]]++
		}
	}
	perKey := make([]int, 0, putWorkers*putKeys)
	for w := range putWorkers {
		for k := range putKeys {
			perKey = append(perKey, reads[pKey(w, k)])
		}
	}
	slices.Sort(perKey)
	t.Logf("%d cycles in %v; linearizable reads per p key: fewest %d, median %d, most %d", cycles, time.Since(start).Round(time.Millisecond), perKey[0], perKey[len(perKey)/2], perKey[len(perKey)-1])
	// Ten cycles read each key ~25 times (median); a key never read would
	// leave its linearizability unchecked.
	if cycles >= 10 && perKey[0] == 0 {
		t.Errorf("a p key was never read by a linearizable get in %d cycles", cycles)
	}
	_ = cli.Close()
}
