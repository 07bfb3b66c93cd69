package lease

import (
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// clock is a manual clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

type fixture struct {
	t   *testing.T
	dir string
	db  *pebble.DB
	clk *clock
	tab *Table
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, dir: t.TempDir(), clk: &clock{t: time.Unix(1000, 0)}}
	f.open()
	t.Cleanup(func() { _ = f.db.Close() })
	return f
}

func (f *fixture) open() {
	f.t.Helper()
	db, err := storage.Open(f.dir, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	f.db = db
	if f.tab, err = Open(db, f.clk.now); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) reopen() {
	f.t.Helper()
	if err := f.db.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.open()
}

// apply runs fn on a batch and commits it, as the apply loop does.
func (f *fixture) apply(fn func(w *pebble.Batch) error) error {
	f.t.Helper()
	w := f.db.NewIndexedBatch()
	defer func() { _ = w.Close() }()
	if err := fn(w); err != nil {
		return err
	}
	if err := w.Commit(pebble.Sync); err != nil {
		f.t.Fatal(err)
	}
	return nil
}

func (f *fixture) grant(id, ttl int64) error {
	return f.apply(func(w *pebble.Batch) error { return f.tab.Grant(w, id, ttl) })
}

func (f *fixture) remaining(id int64) time.Duration {
	f.t.Helper()
	left, _, err := f.tab.Remaining(id)
	if err != nil {
		f.t.Fatalf("remaining of %x: %v", id, err)
	}
	return left
}

func TestGrantRevokeAndKeys(t *testing.T) {
	f := newFixture(t)
	if err := f.grant(5, 10); err != nil {
		t.Fatal(err)
	}
	if err := f.grant(5, 10); !errors.Is(err, ErrExists) {
		t.Fatalf("second grant of 5: %v, want ErrExists", err)
	}
	if err := f.grant(6, MaxTTL+1); !errors.Is(err, ErrTTLTooLarge) {
		t.Fatalf("grant over MaxTTL: %v, want ErrTTLTooLarge", err)
	}
	if err := f.grant(-1, 10); err != nil { // the ID whose index ends the key space
		t.Fatal(err)
	}
	if !f.tab.Exists(5) || f.tab.Exists(6) || !f.tab.Exists(-1) {
		t.Fatalf("Exists: 5 %v, 6 %v, -1 %v", f.tab.Exists(5), f.tab.Exists(6), f.tab.Exists(-1))
	}
	must(t, f.apply(func(w *pebble.Batch) error {
		for _, k := range []string{"b", "a", "c"} {
			if err := f.tab.Attach(w, 5, []byte(k)); err != nil {
				return err
			}
		}
		if err := f.tab.Attach(w, -1, []byte("z")); err != nil {
			return err
		}
		if err := f.tab.Attach(w, 4, []byte("other")); err != nil {
			return err
		}
		// The batch sees its own writes.
		keys, err := Keys(w, 5)
		if err != nil || len(keys) != 3 {
			t.Errorf("keys of 5 inside the batch: %q, %v", keys, err)
		}
		return f.tab.Detach(w, 5, []byte("c"))
	}))
	keys, err := f.tab.Keys(5)
	if err != nil || !slices.EqualFunc(keys, [][]byte{[]byte("a"), []byte("b")}, slices.Equal) {
		t.Fatalf("keys of 5: %q, %v; want a, b", keys, err)
	}
	if keys, _ := f.tab.Keys(-1); len(keys) != 1 || string(keys[0]) != "z" {
		t.Fatalf("keys of -1: %q; want z", keys)
	}
	must(t, f.apply(func(w *pebble.Batch) error { return f.tab.Revoke(w, 5) }))
	must(t, f.apply(func(w *pebble.Batch) error { return f.tab.Revoke(w, -1) }))
	if err := f.apply(func(w *pebble.Batch) error { return f.tab.Revoke(w, 5) }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second revoke: %v, want ErrNotFound", err)
	}
	for _, id := range []int64{5, -1} {
		if keys, _ := f.tab.Keys(id); len(keys) != 0 {
			t.Fatalf("keys of revoked %x: %q", id, keys)
		}
	}
	if keys, _ := f.tab.Keys(4); len(keys) != 1 {
		t.Fatalf("revokes took the keys of lease 4: %q", keys)
	}
	f.reopen()
	if got := f.tab.IDs(); len(got) != 0 {
		t.Fatalf("leases after revokes and reopen: %v", got)
	}
}

// TestTimeAcrossLeadersAndRestarts follows one lease through a primary's
// keep-alives and checkpoints, a change of primary and a restart: its
// remaining time never goes back up by more than the promotion's extension,
// and never runs out before its holder's promise.
func TestTimeAcrossLeadersAndRestarts(t *testing.T) {
	f := newFixture(t)
	if _, err := f.tab.Renew(1); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("renew on a follower: %v, want ErrNotPrimary", err)
	}
	f.tab.Promote(2, time.Second)
	must(t, f.grant(1, 60))
	must(t, f.grant(2, 60))
	f.clk.advance(20 * time.Second)
	if got := f.remaining(1); got != 40*time.Second {
		t.Fatalf("remaining after 20s: %v", got)
	}
	if ttl, err := f.tab.Renew(1); err != nil || ttl != 60 {
		t.Fatalf("renew: %d, %v", ttl, err)
	}
	// Only the renewed lease needs a checkpoint yet.
	cps := f.tab.Checkpoints(100, 30*time.Second)
	if len(cps) != 1 || cps[0].ID != 1 || cps[0].Remaining_TTL != 60_000 {
		t.Fatalf("checkpoints: %v, want lease 1 at 60000ms", cps)
	}
	if cps := f.tab.Checkpoints(100, 30*time.Second); len(cps) != 0 {
		t.Fatalf("checkpoints again at once: %v", cps)
	}
	f.clk.advance(15 * time.Second) // lease 2: 25s left, its grant 35s ago
	cps = append(cps, f.tab.Checkpoints(100, 30*time.Second)...)
	if len(cps) != 2 || cps[1].ID != 2 || cps[1].Remaining_TTL != 25_000 {
		t.Fatalf("checkpoints after refresh: %v", cps)
	}
	// The primary's own checkpoints leave its deadlines alone.
	f.clk.advance(time.Second)
	must(t, f.apply(func(w *pebble.Batch) error { return f.tab.Checkpoint(w, cps, 2) }))
	if got := f.remaining(1); got != 44*time.Second {
		t.Fatalf("primary's remaining after its checkpoint: %v, want 44s", got)
	}
	// A follower restarts from the checkpoints: 60s and 25s.
	f.tab.Demote()
	f.reopen()
	f.clk.advance(3 * time.Second)
	f.tab.Promote(3, time.Second)
	if got := f.remaining(1); got != 58*time.Second {
		t.Fatalf("remaining after restart and promotion: %v, want 58s (60 - 3 + 1)", got)
	}
	if got := f.remaining(2); got != 23*time.Second {
		t.Fatalf("remaining after restart and promotion: %v, want 23s (25 - 3 + 1)", got)
	}
	// An earlier leader's late checkpoint moves a deadline only later.
	must(t, f.apply(func(w *pebble.Batch) error {
		return f.tab.Checkpoint(w, []*pb.LeaseCheckpoint{{ID: 1, Remaining_TTL: 10_000}, {ID: 2, Remaining_TTL: 30_000}}, 2)
	}))
	if a, b := f.remaining(1), f.remaining(2); a != 58*time.Second || b != 30*time.Second {
		t.Fatalf("after a late checkpoint: %v and %v, want 58s and 30s", a, b)
	}
	// Expiry: lease 2 first, offered once until the retry interval passes.
	f.clk.advance(30 * time.Second)
	if got := f.tab.Expired(10, 5*time.Second); !slices.Equal(got, []int64{2}) {
		t.Fatalf("expired: %v, want [2]", got)
	}
	if _, err := f.tab.Renew(2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("renew of an expired lease: %v, want ErrNotFound", err)
	}
	if got := f.tab.Expired(10, 5*time.Second); len(got) != 0 {
		t.Fatalf("expired again before the retry: %v", got)
	}
	f.clk.advance(5 * time.Second)
	if got := f.tab.Expired(10, 5*time.Second); !slices.Equal(got, []int64{2}) {
		t.Fatalf("expired after the retry interval: %v, want [2]", got)
	}
	// A follower applying checkpoints restarts its deadlines from them.
	f.tab.Demote()
	must(t, f.apply(func(w *pebble.Batch) error {
		return f.tab.Checkpoint(w, []*pb.LeaseCheckpoint{{ID: 1, Remaining_TTL: 7_000}}, 3)
	}))
	f.tab.Promote(4, 0)
	if got := f.remaining(1); got != 7*time.Second {
		t.Fatalf("remaining from a follower's checkpoint: %v, want 7s", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A restarted member counts the time since each remaining TTL was written,
// the time it was down included, so that a lease it leads again at once
// does not get that time back (issue 17's restart gap).
func TestRestartCountsTimeAway(t *testing.T) {
	f := newFixture(t)
	f.tab.Promote(2, 0)
	must(t, f.grant(1, 60)) // never checkpointed
	must(t, f.grant(2, 60))
	must(t, f.grant(3, 60))
	f.clk.advance(2 * time.Second)
	must(t, f.apply(func(w *pebble.Batch) error {
		return f.tab.Checkpoint(w, []*pb.LeaseCheckpoint{{ID: 2, Remaining_TTL: 58_000}, {ID: 3, Remaining_TTL: 5_000}}, 2)
	}))
	f.clk.advance(3 * time.Second) // up, then killed
	f.tab.Demote()
	f.reopen()
	f.clk.advance(4 * time.Second) // down for 4s, then restarted
	f.reopen()
	f.tab.Promote(3, 0)
	for id, want := range map[int64]time.Duration{1: 51 * time.Second, 2: 51 * time.Second, 3: 0} {
		if got := f.remaining(id); got != want {
			t.Errorf("lease %d after 3s up and 4s down since its last write: %v left, want %v", id, got, want)
		}
	}
	if got := f.tab.Expired(10, time.Second); !slices.Equal(got, []int64{3}) {
		t.Errorf("expired at once after the restart: %v, want [3]", got)
	}

	// A wall clock that went back counts as no time away.
	f.clk.advance(-time.Hour)
	f.tab.Demote()
	f.reopen()
	f.tab.Promote(4, 0)
	if got := f.remaining(2); got != 58*time.Second {
		t.Errorf("after the clock went back: %v left, want the persisted 58s", got)
	}
}

// A clock record is only believed for the remaining TTL it was written with:
// a lease record written without one (an etcd snapshot's load) restarts
// from its remaining TTL, and a snapshot's install clears the records.
func TestClockRecordMustMatch(t *testing.T) {
	f := newFixture(t)
	must(t, f.grant(1, 60))
	must(t, f.apply(func(w *pebble.Batch) error { return Load(w, 1, 60, 30*time.Second, nil) }))
	f.clk.advance(10 * time.Second)
	f.reopen()
	f.tab.Promote(2, 0)
	if got := f.remaining(1); got != 30*time.Second {
		t.Errorf("lease loaded after its grant, restarted 10s later: %v left, want 30s", got)
	}
	var records int
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixLeaseClock}, UpperBound: []byte{storage.PrefixLeaseClock + 1}})
	must(t, err)
	for it.First(); it.Valid(); it.Next() {
		records++
	}
	must(t, it.Close())
	if records != 1 {
		t.Errorf("%d clock records after one grant, want 1", records)
	}
	must(t, f.apply(func(w *pebble.Batch) error { return f.tab.Revoke(w, 1) }))
	it, err = f.db.NewIter(&pebble.IterOptions{LowerBound: []byte{storage.PrefixLeaseClock}, UpperBound: []byte{storage.PrefixLeaseClock + 1}})
	must(t, err)
	if it.First() {
		t.Errorf("clock record of lease %x left after its revoke", it.Key()[1:])
	}
	must(t, it.Close())
}
