package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinthdb/plinth/internal/lockelect/v3electionpb"
	"github.com/plinthdb/plinth/internal/lockelect/v3lockpb"
)

func grant(t *testing.T, cli *clientv3.Client, ttl int64) int64 {
	t.Helper()
	resp, err := cli.Grant(context.Background(), ttl)
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	return int64(resp.ID)
}

// wantStatus fails t unless err is a gRPC status with code and message.
func wantStatus(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || st.Message() != msg {
		t.Fatalf("%s: got %v, want %v %q", what, err, code, msg)
	}
}

// pending runs call in the background; its result arrives on the channel.
func pending[R any](call func() (R, error)) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := call()
		done <- err
	}()
	return done
}

func notYet(t *testing.T, what string, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s returned early: %v", what, err)
	case <-time.After(300 * time.Millisecond):
	}
}

func within(t *testing.T, what string, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

func TestLockService(t *testing.T) {
	_, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	locks := v3lockpb.NewLockClient(cli.ActiveConnection())
	a, b, c := grant(t, cli, 60), grant(t, cli, 60), grant(t, cli, 60)

	held, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: a})
	if err != nil {
		t.Fatalf("lock: %v", err)
	}
	if want := fmt.Sprintf("l/%x", a); string(held.Key) != want {
		t.Fatalf("lock key %q, want %q", held.Key, want)
	}
	kv, err := cli.Get(ctx, string(held.Key))
	if err != nil || len(kv.Kvs) != 1 || kv.Kvs[0].Lease != a || kv.Kvs[0].CreateRevision != held.Header.Revision {
		t.Fatalf("lock key after lock: %v %v (header %v)", kv, err, held.Header)
	}
	// One lease is one hold: locking again answers at once.
	again, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: a})
	if err != nil || string(again.Key) != string(held.Key) {
		t.Fatalf("lock again with the same lease: %v %v", again, err)
	}

	// b waits for a; c waits and gives up; b gets the lock on a's unlock.
	bDone := pending(func() (*v3lockpb.LockResponse, error) {
		return locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: b})
	})
	cCtx, cCancel := context.WithCancel(ctx)
	cDone := pending(func() (*v3lockpb.LockResponse, error) {
		return locks.Lock(cCtx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: c})
	})
	notYet(t, "lock b", bDone)
	cCancel()
	wantStatus(t, "canceled lock", within(t, "canceled lock", cDone), codes.Canceled, "context canceled")
	cKey := fmt.Sprintf("l/%x", c)
	waitFor(ctx, t, func() bool {
		resp, err := cli.Get(ctx, cKey)
		return err == nil && len(resp.Kvs) == 0
	})
	if _, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key}); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if err := within(t, "lock b", bDone); err != nil {
		t.Fatalf("lock b: %v", err)
	}

	// A waiter whose lease ends while it waits gets etcd's error.
	cDone = pending(func() (*v3lockpb.LockResponse, error) {
		return locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: c})
	})
	notYet(t, "lock c", cDone)
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(c)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(b)); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "lock with an ended lease", within(t, "lock c", cDone), codes.Unknown, "mutex: session is expired")

	_, err = locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("l"), Lease: 12345})
	wantStatus(t, "lock with no such lease", err, codes.Unknown, "etcdserver: requested lease not found")
	_, err = locks.Unlock(ctx, &v3lockpb.UnlockRequest{})
	wantStatus(t, "unlock of no key", err, codes.Unknown, "etcdserver: key is not provided")

	// Lease 0: the member grants a lease of its own, as etcd does.
	own, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("m")})
	if err != nil {
		t.Fatalf("lock without a lease: %v", err)
	}
	kv, err = cli.Get(ctx, string(own.Key))
	if err != nil || len(kv.Kvs) != 1 || kv.Kvs[0].Lease == 0 || string(own.Key) != fmt.Sprintf("m/%x", kv.Kvs[0].Lease) {
		t.Fatalf("lock without a lease: key %q: %v %v", own.Key, kv, err)
	}
}

func TestElectionService(t *testing.T) {
	_, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	el := v3electionpb.NewElectionClient(cli.ActiveConnection())
	a, b := grant(t, cli, 60), grant(t, cli, 60)
	name := []byte("e")

	_, err := el.Leader(ctx, &v3electionpb.LeaderRequest{Name: name})
	wantStatus(t, "leader of an empty election", err, codes.Unknown, "election: no leader")

	obsCtx, obsCancel := context.WithCancel(ctx)
	defer obsCancel()
	obs, err := el.Observe(obsCtx, &v3electionpb.LeaderRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	observed := make(chan string, 16)
	go func() {
		defer close(observed)
		for {
			resp, err := obs.Recv()
			if err != nil {
				return
			}
			observed <- string(resp.Kv.Value)
		}
	}()
	next := func(want string) {
		t.Helper()
		select {
		case got := <-observed:
			if got != want {
				t.Fatalf("observed %q, want %q", got, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("observed nothing, want %q", want)
		}
	}

	won, err := el.Campaign(ctx, &v3electionpb.CampaignRequest{Name: name, Lease: a, Value: []byte("a")})
	if err != nil {
		t.Fatalf("campaign: %v", err)
	}
	ld := won.Leader
	if string(ld.Key) != fmt.Sprintf("e/%x", a) || ld.Rev != won.Header.Revision || ld.Lease != a || string(ld.Name) != "e" {
		t.Fatalf("campaign answered %v", won)
	}
	next("a")
	got, err := el.Leader(ctx, &v3electionpb.LeaderRequest{Name: name})
	if err != nil || string(got.Kv.Value) != "a" || got.Kv.CreateRevision != ld.Rev {
		t.Fatalf("leader: %v %v", got, err)
	}

	bDone := pending(func() (*v3electionpb.CampaignResponse, error) {
		return el.Campaign(ctx, &v3electionpb.CampaignRequest{Name: name, Lease: b, Value: []byte("b")})
	})
	notYet(t, "campaign b", bDone)

	if _, err := el.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: ld, Value: []byte("a2")}); err != nil {
		t.Fatalf("proclaim: %v", err)
	}
	next("a2")
	stale := &v3electionpb.LeaderKey{Name: ld.Name, Key: ld.Key, Rev: ld.Rev + 100, Lease: a}
	_, err = el.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: stale, Value: []byte("x")})
	wantStatus(t, "proclaim by a stale leader", err, codes.Unknown, "election: not leader")
	_, err = el.Proclaim(ctx, &v3electionpb.ProclaimRequest{Value: []byte("x")})
	wantStatus(t, "proclaim without a leader key", err, codes.Unknown, `"leader" field must be provided`)
	// Resigning what is not ours deletes nothing.
	if _, err := el.Resign(ctx, &v3electionpb.ResignRequest{Leader: stale}); err != nil {
		t.Fatalf("resign of a stale leadership: %v", err)
	}
	notYet(t, "campaign b", bDone)

	if _, err := el.Resign(ctx, &v3electionpb.ResignRequest{Leader: ld}); err != nil {
		t.Fatalf("resign: %v", err)
	}
	if err := within(t, "campaign b", bDone); err != nil {
		t.Fatalf("campaign b: %v", err)
	}
	next("b")
	// b's lease ends: no leader, until a campaigns again.
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(b)); err != nil {
		t.Fatal(err)
	}
	if _, err := el.Campaign(ctx, &v3electionpb.CampaignRequest{Name: name, Lease: a, Value: []byte("a3")}); err != nil {
		t.Fatalf("campaign again: %v", err)
	}
	next("a3")
	obsCancel()
}

// TestConcurrencyRecipes runs the etcd client's recipes (Session, Mutex,
// Election, STM), which use only KV, Lease and Watch, against plinth.
func TestConcurrencyRecipes(t *testing.T) {
	_, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("Mutex", func(t *testing.T) {
		const workers, rounds = 4, 5
		var mu sync.Mutex
		holders, most := 0, 0
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
				if err != nil {
					errs <- err
					return
				}
				defer s.Close()
				m := concurrency.NewMutex(s, "mutex")
				for r := 0; r < rounds; r++ {
					if err := m.Lock(ctx); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					holders++
					most = max(most, holders)
					mu.Unlock()
					time.Sleep(5 * time.Millisecond)
					mu.Lock()
					holders--
					mu.Unlock()
					if err := m.Unlock(ctx); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("mutex: %v", err)
		}
		if most != 1 {
			t.Fatalf("%d holders at once", most)
		}
		s1, _ := concurrency.NewSession(cli)
		s2, _ := concurrency.NewSession(cli)
		defer s1.Close()
		defer s2.Close()
		m1, m2 := concurrency.NewMutex(s1, "try"), concurrency.NewMutex(s2, "try")
		if err := m1.TryLock(ctx); err != nil {
			t.Fatalf("trylock: %v", err)
		}
		if err := m2.TryLock(ctx); err != concurrency.ErrLocked {
			t.Fatalf("second trylock: %v, want ErrLocked", err)
		}
		// The session's end releases the lock.
		s1.Close()
		if err := m2.Lock(ctx); err != nil {
			t.Fatalf("lock after the holder's session ended: %v", err)
		}
	})

	t.Run("Election", func(t *testing.T) {
		s1, err := concurrency.NewSession(cli)
		if err != nil {
			t.Fatal(err)
		}
		s2, err := concurrency.NewSession(cli)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		e1, e2 := concurrency.NewElection(s1, "elect"), concurrency.NewElection(s2, "elect")
		if err := e1.Campaign(ctx, "one"); err != nil {
			t.Fatal(err)
		}
		obsCtx, obsCancel := context.WithCancel(ctx)
		defer obsCancel()
		seen := e2.Observe(obsCtx)
		expect := func(want string) {
			t.Helper()
			for {
				select {
				case resp := <-seen:
					if string(resp.Kvs[0].Value) == want {
						return
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("observer never saw %q", want)
				}
			}
		}
		expect("one")
		done := make(chan error, 1)
		go func() { done <- e2.Campaign(ctx, "two") }()
		notYet(t, "second campaign", done)
		if err := e1.Proclaim(ctx, "uno"); err != nil {
			t.Fatal(err)
		}
		expect("uno")
		s1.Close() // revokes the lease: leadership passes to e2
		if err := within(t, "second campaign", done); err != nil {
			t.Fatal(err)
		}
		expect("two")
		leader, err := e2.Leader(ctx)
		if err != nil || string(leader.Kvs[0].Value) != "two" {
			t.Fatalf("leader: %v %v", leader, err)
		}
		if err := e2.Resign(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := e2.Leader(ctx); err != concurrency.ErrElectionNoLeader {
			t.Fatalf("leader after resign: %v", err)
		}
	})

	t.Run("STM", func(t *testing.T) {
		if _, err := cli.Put(ctx, "stm/a", "50"); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, "stm/b", "50"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
					var a, b int
					fmt.Sscan(s.Get("stm/a"), &a)
					fmt.Sscan(s.Get("stm/b"), &b)
					s.Put("stm/a", fmt.Sprint(a-5))
					s.Put("stm/b", fmt.Sprint(b+5))
					return nil
				}, concurrency.WithAbortContext(ctx))
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("stm: %v", err)
			}
		}
		resp, err := cli.Get(ctx, "stm/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, kv := range resp.Kvs {
			got = append(got, string(kv.Key)+"="+string(kv.Value))
		}
		if strings.Join(got, " ") != "stm/a=10 stm/b=90" {
			t.Fatalf("after 8 transfers: %v", got)
		}
	})
}
