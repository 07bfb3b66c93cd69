package election_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/plinthdb/plinth/election"
	"github.com/plinthdb/plinth/internal/testmember"
)

// plinthBin is the plinth binary the tests run, built by TestMain.
var plinthBin string

func TestMain(m *testing.M) {
	// ELECTION_TARGET_BIN runs the tests against another server that takes
	// etcd's flags, e.g. the reference etcd that bench builds (bench/out/etcd).
	bin, cleanup, err := testmember.Binary("ELECTION_TARGET_BIN")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	plinthBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// startMember starts one plinth member whose minimum lease TTL is 1s (10ms
// heartbeats, 100ms election timeout).
func startMember(t *testing.T) *testmember.Member {
	t.Helper()
	m := testmember.New(t, plinthBin, "--heartbeat-interval", "10", "--election-timeout", "100")
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m
}

func client(t *testing.T, m *testmember.Member) *clientv3.Client {
	t.Helper()
	cli, err := m.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// candidate is one elector run by a test, with its callbacks recorded.
type candidate struct {
	e       *election.Elector
	id      string
	cancel  context.CancelFunc
	done    chan struct{}             // closed when Run returned
	started chan *election.Leadership // each OnStartedLeading
	stopped chan struct{}             // each OnStoppedLeading
	// work runs as the body of OnStartedLeading; by default it waits for
	// its context.
	work func(ctx context.Context, lead *election.Leadership)
}

// campaign starts a candidate of its own client on m with cfg (Prefix
// "/test" and Identity id when empty, callbacks recorded). It is stopped when
// the test ends.
func campaign(t *testing.T, m *testmember.Member, id string, cfg election.Config, work func(context.Context, *election.Leadership)) *candidate {
	t.Helper()
	c := &candidate{
		id:      id,
		done:    make(chan struct{}),
		started: make(chan *election.Leadership, 16),
		stopped: make(chan struct{}, 16),
		work:    work,
	}
	if c.work == nil {
		c.work = func(ctx context.Context, _ *election.Leadership) { <-ctx.Done() }
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/test"
	}
	cfg.Identity = id
	onNew := cfg.Callbacks.OnNewLeader
	cfg.Callbacks = election.Callbacks{
		OnStartedLeading: func(ctx context.Context, lead *election.Leadership) {
			c.started <- lead
			c.work(ctx, lead)
		},
		OnStoppedLeading: func() { c.stopped <- struct{}{} },
		OnNewLeader:      onNew,
	}
	e, err := election.New(client(t, m), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.e = e
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() {
		defer close(c.done)
		_ = e.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			t.Errorf("candidate %s: Run did not return 30s after its context was cancelled", id)
		}
	})
	return c
}

// firstLeader waits up to d for one of cs to start leading.
func firstLeader(t *testing.T, d time.Duration, cs ...*candidate) (*candidate, *election.Leadership) {
	t.Helper()
	deadline := time.After(d)
	for {
		for _, c := range cs {
			select {
			case l := <-c.started:
				return c, l
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatalf("no candidate started leading within %v", d)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// eventually polls cond every 10ms for d, and fails with what otherwise.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	cb := election.Callbacks{OnStartedLeading: func(context.Context, *election.Leadership) {}}
	ok := election.Config{Prefix: "/p", Identity: "a", Callbacks: cb}
	for _, tc := range []struct {
		name string
		edit func(*election.Config)
		want string // "" for valid
	}{
		{"defaults", func(*election.Config) {}, ""},
		{"no prefix", func(c *election.Config) { c.Prefix = "" }, "Prefix is empty"},
		{"no identity", func(c *election.Config) { c.Identity = "" }, "Identity is empty"},
		{"no callback", func(c *election.Config) { c.Callbacks.OnStartedLeading = nil }, "OnStartedLeading is nil"},
		{"lease not above renew", func(c *election.Config) {
			c.LeaseDuration, c.RenewDeadline, c.RetryPeriod = 10*time.Second, 10*time.Second, time.Second
		}, "LeaseDuration 10s must be greater than RenewDeadline 10s"},
		{"renew not above retry*jitter", func(c *election.Config) {
			c.LeaseDuration, c.RenewDeadline, c.RetryPeriod = 10*time.Second, 6*time.Second, 5*time.Second
		}, "RenewDeadline 6s must be greater than RetryPeriod 5s times 1.2"},
		{"negative retry", func(c *election.Config) { c.RetryPeriod = -time.Second }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if c.LeaseDuration != election.DefaultLeaseDuration || c.Name != c.Prefix {
					t.Fatalf("defaults not filled: %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestOneLeaderAndReleaseOnCancel runs three candidates: exactly one leads,
// every candidate learns who, and cancelling the leader hands over at once,
// long before its 10s lease could run out.
func TestOneLeaderAndReleaseOnCancel(t *testing.T) {
	m := startMember(t)
	var active, overlaps atomic.Int32
	work := func(ctx context.Context, _ *election.Leadership) {
		if active.Add(1) > 1 {
			overlaps.Add(1)
		}
		<-ctx.Done()
		active.Add(-1)
	}
	cfg := election.Config{LeaseDuration: 10 * time.Second, RenewDeadline: 6 * time.Second, RetryPeriod: time.Second, ReleaseOnCancel: true}
	var cs []*candidate
	newLeaders := make([]atomic.Value, 3)
	for i := range 3 {
		c := cfg
		c.Callbacks.OnNewLeader = func(id string) { newLeaders[i].Store(id) }
		cs = append(cs, campaign(t, m, fmt.Sprintf("c%d", i), c, work))
	}

	live := cs
	for round := 0; round < 2; round++ {
		leader, lead := firstLeader(t, 10*time.Second, live...)
		if lead.Identity() != leader.id || lead.Token() <= 0 {
			t.Fatalf("leadership %q token %d, want %q and a positive token", lead.Identity(), lead.Token(), leader.id)
		}
		eventually(t, 5*time.Second, "every live candidate sees the leader", func() bool {
			for i, c := range cs {
				if !contains(live, c) {
					continue
				}
				if got, _ := newLeaders[i].Load().(string); got != leader.id || c.e.Leader() != leader.id {
					return false
				}
			}
			return true
		})
		for _, c := range live {
			if c.e.IsLeader() != (c == leader) {
				t.Fatalf("%s: IsLeader %v while %s leads", c.id, c.e.IsLeader(), leader.id)
			}
		}

		// Cancel the leader: with ReleaseOnCancel the next takes over
		// long before the 10s lease would run out.
		start := time.Now()
		leader.cancel()
		var rest []*candidate
		for _, c := range live {
			if c != leader {
				rest = append(rest, c)
			}
		}
		next, nextLead := firstLeader(t, 10*time.Second, rest...)
		took := time.Since(start)
		t.Logf("round %d: %s handed over to %s in %v", round, leader.id, next.id, took)
		if took > 4*time.Second {
			t.Fatalf("handover took %v: the leader did not release its 10s lease", took)
		}
		if nextLead.Token() <= lead.Token() {
			t.Fatalf("next term's token %d is not above %d", nextLead.Token(), lead.Token())
		}
		select {
		case <-leader.done:
		case <-time.After(10 * time.Second):
			t.Fatal("Run of the cancelled leader did not return")
		}
		if len(leader.stopped) != 1 {
			t.Fatalf("OnStoppedLeading called %d times, want 1", len(leader.stopped))
		}
		next.started <- nextLead // for the next round's firstLeader
		live = rest
	}
	if n := overlaps.Load(); n > 0 {
		t.Fatalf("%d times a callback started while another still ran", n)
	}
}

func contains(cs []*candidate, c *candidate) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

// TestFencedWrites deposes a leader by deleting its key and checks that
// its writes are refused by the server from then on, while the next
// leader's go through.
func TestFencedWrites(t *testing.T) {
	m := startMember(t)
	admin := client(t, m)
	ctx := t.Context()
	cfg := election.Config{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond}
	a := campaign(t, m, "a", cfg, nil)
	oldLeader, old := firstLeader(t, 10*time.Second, a)
	if _, err := old.Put(ctx, "fenced/x", "a1"); err != nil {
		t.Fatalf("put of the leader: %v", err)
	}
	b := campaign(t, m, "b", cfg, nil)
	eventually(t, 5*time.Second, "b sees a lead", func() bool { return b.e.Leader() == "a" })

	// The term ends on the server: a's key is gone.
	if _, err := admin.Delete(ctx, old.Key()); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Put(ctx, "fenced/x", "a2"); !errors.Is(err, election.ErrFenced) {
		t.Fatalf("put of the deposed leader: %v, want ErrFenced", err)
	}
	_, next := firstLeader(t, 10*time.Second, b)
	if next.Token() <= old.Token() {
		t.Fatalf("new token %d not above the old %d", next.Token(), old.Token())
	}
	select {
	case <-oldLeader.stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("a did not step down when its key was deleted")
	}
	if _, err := next.Put(ctx, "fenced/x", "b1"); err != nil {
		t.Fatalf("put of the new leader: %v", err)
	}
	for name, write := range map[string]func() error{
		"put": func() error { _, err := old.Put(ctx, "fenced/x", "a3"); return err },
		"delete": func() error {
			_, err := old.Delete(ctx, "fenced/", clientv3.WithPrefix())
			return err
		},
		"txn": func() error {
			_, err := old.Txn(ctx).If(clientv3.Compare(clientv3.Value("fenced/x"), "=", "b1")).
				Then(clientv3.OpPut("fenced/x", "a4")).Commit()
			return err
		},
	} {
		if err := write(); !errors.Is(err, election.ErrFenced) {
			t.Errorf("%s of the deposed leader: %v, want ErrFenced", name, err)
		}
	}

	// The new leader's txn answers as its own comparisons say.
	resp, err := next.Txn(ctx).If(clientv3.Compare(clientv3.Value("fenced/x"), "=", "nope")).
		Then(clientv3.OpPut("fenced/x", "b2")).Else(clientv3.OpGet("fenced/x")).Commit()
	if err != nil || resp.Succeeded || len(resp.Responses) != 1 {
		t.Fatalf("txn with a false comparison: %+v, %v; want Succeeded false and the else branch", resp, err)
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) != 1 || string(kvs[0].Value) != "b1" {
		t.Fatalf("else branch read %v, want b1", kvs)
	}
	resp, err = next.Txn(ctx).If(clientv3.Compare(clientv3.Value("fenced/x"), "=", "b1")).
		Then(clientv3.OpPut("fenced/x", "b2")).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("txn with a true comparison: %+v, %v", resp, err)
	}
	got, err := admin.Get(ctx, "fenced/x")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "b2" {
		t.Fatalf("fenced/x: %v, %v; want b2", got, err)
	}
	if _, err := next.Delete(ctx, "fenced/x"); err != nil {
		t.Fatalf("delete of the new leader: %v", err)
	}
	// a campaigns again, behind b.
	eventually(t, 5*time.Second, "a sees b lead", func() bool { return a.e.Leader() == "b" && !a.e.IsLeader() })
}

// TestCheckAndMetric deposes a leader whose work ignores its context: Check
// fails until the work returns, and the gauge follows leadership.
func TestCheckAndMetric(t *testing.T) {
	m := startMember(t)
	admin := client(t, m)
	reg := prometheus.NewRegistry()
	release := make(chan struct{})
	var releaseOnce sync.Once
	cfg := election.Config{Name: "ctl", LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second,
		RetryPeriod: 500 * time.Millisecond, Registerer: reg}
	c := campaign(t, m, "a", cfg, func(context.Context, *election.Leadership) { <-release })
	// A failure before the test releases the work would leave Run
	// waiting: cleanups run last first, so this one before campaign's.
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	other := cfg
	other.Prefix = "/other"
	other.Name = "other"
	campaign(t, m, "x", other, nil) // a second elector on the same registry

	gauge := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "plinth_election_is_leader" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == name {
					return m.GetGauge().GetValue()
				}
			}
		}
		t.Fatalf("no plinth_election_is_leader{name=%q}", name)
		return 0
	}
	_, lead := firstLeader(t, 10*time.Second, c)
	if err := c.e.Check(); err != nil {
		t.Fatalf("Check while leading: %v", err)
	}
	if g := gauge("ctl"); g != 1 {
		t.Fatalf("gauge while leading: %v", g)
	}
	eventually(t, 5*time.Second, "the other elector leads", func() bool { return gauge("other") == 1 })

	if _, err := admin.Delete(t.Context(), lead.Key()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("no OnStoppedLeading after the key was deleted")
	}
	if g := gauge("ctl"); g != 0 {
		t.Fatalf("gauge after leadership was lost: %v", g)
	}
	err := c.e.Check()
	if err == nil || !strings.Contains(err.Error(), "OnStartedLeading has not returned") {
		t.Fatalf("Check while the deposed leader's work runs: %v", err)
	}
	t.Logf("Check: %v", err)
	releaseOnce.Do(func() { close(release) })
	eventually(t, 5*time.Second, "Check passes once the work returned", func() bool { return c.e.Check() == nil })
	// With nobody else in line, a leads again, in a new term.
	_, again := firstLeader(t, 10*time.Second, c)
	if again.Token() <= lead.Token() {
		t.Fatalf("new term's token %d not above %d", again.Token(), lead.Token())
	}
	eventually(t, 5*time.Second, "gauge back to 1", func() bool { return gauge("ctl") == 1 })
}

// TestRenewDeadline pauses the only member: the leader cannot renew, and
// steps down after its renew deadline without hearing from the server.
func TestRenewDeadline(t *testing.T) {
	m := startMember(t)
	cfg := election.Config{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond}
	c := campaign(t, m, "a", cfg, nil)
	_, lead := firstLeader(t, 10*time.Second, c)
	time.Sleep(time.Second) // a renewal or two
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	select {
	case <-c.stopped:
		took := time.Since(paused)
		t.Logf("stepped down %v after the member paused", took)
		// The last renewal was sent at most a retry period before the pause.
		if took < cfg.RenewDeadline-cfg.RetryPeriod-100*time.Millisecond {
			t.Fatalf("stepped down after %v, before the renew deadline could pass", took)
		}
	case <-time.After(cfg.RenewDeadline + 5*time.Second):
		t.Fatal("leader did not step down while the server was paused")
	}
	if c.e.IsLeader() {
		t.Fatal("IsLeader after stepping down")
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	_, again := firstLeader(t, 20*time.Second, c)
	if again.Token() <= lead.Token() {
		t.Fatalf("new term's token %d not above %d", again.Token(), lead.Token())
	}
	if _, err := lead.Put(t.Context(), "k", "v"); !errors.Is(err, election.ErrFenced) {
		t.Fatalf("put of the old term: %v, want ErrFenced", err)
	}
}
