package compat

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestRandomOps sends the same seeded stream of random KV ops to the
// reference etcd and the target and requires the same answer to each, then
// compares the whole keyspace at every revision still held.
//
// Environment:
//
//	COMPAT_SEED=n        the seed (default: the clock); printed on failure
//	COMPAT_OPS=n         how many ops (default 3000, 500 with -short)
//	COMPAT_KEEP_GOING=n  report up to n mismatches instead of stopping at the
//	                     first (the stores may diverge after a write mismatch)
//	COMPAT_TRACE=1       log every op and the reference's answer on one line
func TestRandomOps(t *testing.T) { randomOps(t, oneMember) }

// TestClusterRandomOps is TestRandomOps against a 3-member target through
// a follower: its writes are forwarded to the leader, its linearizable
// reads wait for a ReadIndex, and its serializable reads must see its own
// writes, as etcd's do.
func TestClusterRandomOps(t *testing.T) { randomOps(t, threeMembers) }

func randomOps(t *testing.T, topo topology) {
	r := newRandomRun(t, topo)
	r.ops(r.n)
	r.sweep("final")
	r.logStats()
}

// TestRestart runs random ops, restarts both servers on their data, and
// requires the same history, the same ids in the headers, and the same
// answers to further ops; twice.
func TestRestart(t *testing.T) { restart(t, oneMember) }

// TestClusterRestart is TestRestart against a 3-member target through a
// follower. A restart stops all three members and starts them again, so the
// history must come back from each member's own disk, not from a peer that
// stayed up; the member under test stays a follower (leadership is moved
// away from it if it wins the new election) and keeps its ids.
func TestClusterRestart(t *testing.T) { restart(t, threeMembers) }

func restart(t *testing.T, topo topology) {
	r := newRandomRun(t, topo)
	for round := range 2 {
		r.ops(r.n / 6)
		r.p.ref.restart(t)
		r.p.tgt.restart(t)
		r.sweep(fmt.Sprintf("after restart %d", round+1))
	}
	r.ops(r.n / 6)
	r.logStats()
}

// randomRun is one seeded stream of random ops against a fresh pair.
type randomRun struct {
	t          *testing.T
	p          *pair
	g          *gen
	seed       int64
	n          int // ops the test should send in all
	done       int // ops sent so far
	keepGoing  int
	mismatches int
	trace      bool
	stats      map[string]int // kind and reference outcome -> count
}

func newRandomRun(t *testing.T, topo topology) *randomRun {
	seed := time.Now().UnixNano()
	if s := os.Getenv("COMPAT_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("COMPAT_SEED: %v", err)
		}
	}
	n := 3000
	if testing.Short() {
		n = 500
	}
	r := &randomRun{
		t:         t,
		seed:      seed,
		n:         envInt(t, "COMPAT_OPS", n),
		keepGoing: envInt(t, "COMPAT_KEEP_GOING", 0),
		trace:     os.Getenv("COMPAT_TRACE") == "1",
		stats:     map[string]int{},
	}
	t.Logf("seed %d", r.seed)
	r.p = startPair(t, topo)
	r.g = newGen(seed)
	return r
}

func (r *randomRun) fail(where, report string) {
	r.t.Helper()
	r.mismatches++
	msg := fmt.Sprintf("MISMATCH at %s (seed %d; rerun with COMPAT_SEED=%d go test -run '^%s$')\n%s",
		where, r.seed, r.seed, r.t.Name(), report)
	if r.mismatches > r.keepGoing {
		r.t.Fatal(msg)
	}
	r.t.Error(msg)
}

// ops sends n more random ops.
func (r *randomRun) ops(n int) {
	r.t.Helper()
	for range n {
		i := r.done
		r.done++
		o := r.g.next()
		if r.trace { // before sending: a server may crash on it
			r.t.Logf("op %d: %s %s", i, o.kind(), oneLine(o.request()))
		}
		ref, report := r.p.run(o)
		if r.trace {
			r.t.Logf("op %d -> %s", i, oneLineOutcome(ref))
		}
		if report != "" {
			r.fail(fmt.Sprintf("op %d", i), report)
		}
		r.g.observe(o, ref)
		if ref.err != nil {
			r.stats[o.kind()+" error "+ref.err.Message()]++
		} else {
			r.stats[o.kind()+" ok"]++
		}
	}
}

// sweep compares the whole keyspace at every revision not compacted away (at
// most 200 of them, evenly spread), then the current one read both ways.
func (r *randomRun) sweep(label string) {
	r.t.Helper()
	first := max(r.g.compactRev, 1)
	step := max((r.g.rev-first)/200, 1)
	for rev := first; rev <= r.g.rev; rev += step {
		o := op{rng: &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev}}
		if _, report := r.p.run(o); report != "" {
			r.fail(fmt.Sprintf("%s sweep at revision %d", label, rev), report)
		}
	}
	for _, serializable := range []bool{false, true} {
		o := op{rng: &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Serializable: serializable}}
		if _, report := r.p.run(o); report != "" {
			r.fail(label+" read", report)
		}
	}
}

func (r *randomRun) logStats() {
	keys := make([]string, 0, len(r.stats))
	for k := range r.stats {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%6d  %s\n", r.stats[k], k)
	}
	r.t.Logf("revision %d, compacted at %d; reference outcomes:\n%s", r.g.rev, r.g.compactRev, b.String())
	if r.p.tgt.checkRole != nil {
		r.p.tgt.checkRole(r.t)
	}
}

func envInt(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}
