package crash

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
)

// TestKillNine runs a member under concurrent write load, kills it with
// SIGKILL at a random moment, restarts it on the same data directory and
// checks the whole history so far; then again, for several cycles.
//
// Rerun a failure with the seed it logged: go test ./test/crash -crash.seed=N.
// The seed fixes the kill moments and the choices of the load, not the
// timing of the requests, so a rerun is close to, not equal to, the failed run.
func TestKillNine(t *testing.T) {
	cycles := 10
	if testing.Short() {
		cycles = 3
	}
	seed := *seedFlag
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (rerun with -crash.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
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
	for cycle := 1; cycle <= cycles; cycle++ {
		before := len(h.snapshot())
		after := 100*time.Millisecond + time.Duration(rng.Int64N(int64(700*time.Millisecond)))
		lctx, stopLoad := context.WithCancel(ctx)
		l := startLoad(lctx, cli, h, cycle, rng.Uint64())
		time.Sleep(after)
		killErr := m.Kill()
		stopLoad()
		l.wait()
		_ = cli.Close()
		if killErr != nil {
			t.Fatalf("cycle %d: %v", cycle, killErr)
		}
		var acked, unacked int
		for _, o := range h.snapshot()[before:] {
			if o.acked {
				acked++
			} else {
				unacked++
			}
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
		t.Logf("cycle %d: killed after %v: %d acknowledged, %d unacknowledged; restarted in %v; revision %d, counters %v, of all unacknowledged ops so far %d found applied, %d not (others undecidable: deletes, d keys since deleted); checked %d ops in %v",
			cycle, after.Round(time.Millisecond), acked, unacked, ready.Round(time.Millisecond), res.rev, res.counters, res.applied, res.notApplied, res.acked+res.unacked, time.Since(checkStart).Round(time.Millisecond))
		if len(errs) > 0 {
			const show = 40
			more := ""
			if len(errs) > show {
				more = "\n..."
				errs = errs[:show]
			}
			t.Fatalf("cycle %d (seed %d): %d violations after the restart:\n%s%s", cycle, seed, len(errs), strings.Join(errs, "\n"), more)
		}
	}
	t.Logf("%d cycles in %v", cycles, time.Since(start).Round(time.Millisecond))
	_ = cli.Close()
}
