package compat

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Lock and Election service comparisons: the same requests, with etcd's own
// generated clients (v3lockpb, v3electionpb), against the reference etcd and
// plinth, step by step. Requests that wait (a Lock or a Campaign behind
// another holder, an Observe stream) run in the background, and later steps
// check that they still wait, or collect what they answered. Normalised
// besides the header's ids and term (checkHeader): the ID of a lease the
// server granted by itself (for a request naming lease 0), in lease fields
// and in keys, shown as CHOSEN. Revisions are compared as they are: both
// servers start empty and see the same writes.

// lockSide is one server of a lock/election comparison.
type lockSide struct {
	s     *server
	lock  v3lockpb.LockClient
	elect v3electionpb.ElectionClient
	lease pb.LeaseClient

	mu      sync.Mutex
	waiting map[string]chan lockResult         // background requests by name
	leaders map[string]*v3electionpb.LeaderKey // leader keys campaigns won, by name
	observe map[string]v3electionpb.Election_ObserveClient
	cancels map[string]context.CancelFunc
}

type lockResult struct {
	resp proto.Message
	err  error
}

// knownLeases are the IDs the steps grant; any other lease ID is one a
// server chose.
func knownLease(id int64) bool { return id >= 100 && id < 200 }

func newLockSide(t *testing.T, s *server) *lockSide {
	conn, err := grpc.NewClient("passthrough:///"+s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	side := &lockSide{s: s, lock: v3lockpb.NewLockClient(conn), elect: v3electionpb.NewElectionClient(conn),
		lease: pb.NewLeaseClient(conn), waiting: map[string]chan lockResult{},
		leaders: map[string]*v3electionpb.LeaderKey{}, observe: map[string]v3electionpb.Election_ObserveClient{},
		cancels: map[string]context.CancelFunc{}}
	t.Cleanup(func() {
		side.mu.Lock()
		for _, cancel := range side.cancels {
			cancel()
		}
		side.mu.Unlock()
		conn.Close()
	})
	return side
}

type lockStep = sideStep[*lockSide]

func TestLockElection(t *testing.T) { runLockSteps(t, oneMember) }

func TestLockElectionOnAFollower(t *testing.T) { runLockSteps(t, threeMembers) }

func runLockSteps(t *testing.T, topo topology) {
	p := startPair(t, topo)
	ref, tgt := newLockSide(t, p.ref), newLockSide(t, p.tgt)
	runSideSteps(t, ref, tgt, ref.s.name, tgt.s.name, lockSteps(), normaliseLockAnswer)
}

var chosenKeyRE = regexp.MustCompile(`/([0-9a-f]+)$`)

// normaliseLockAnswer renders an answer after normalising it (see the top
// of the file).
func normaliseLockAnswer(side *lockSide, resp proto.Message, err error) (string, []string) {
	if errors.Is(err, errStillWaiting) {
		return "still waiting", nil
	}
	if err != nil {
		st := status.Convert(err)
		return fmt.Sprintf("error %s: %s", st.Code(), st.Message()), nil
	}
	resp = proto.Clone(resp)
	lease := func(id *int64) {
		if *id != 0 && !knownLease(*id) {
			*id = -1
		}
	}
	key := func(k []byte) []byte {
		m := chosenKeyRE.FindSubmatchIndex(k)
		if m == nil {
			return k
		}
		id, err := strconv.ParseInt(string(k[m[2]:m[3]]), 16, 64)
		if err != nil || knownLease(id) {
			return k
		}
		return append(append([]byte(nil), k[:m[2]]...), "CHOSEN"...)
	}
	switch r := resp.(type) {
	case *v3lockpb.LockResponse:
		r.Key = key(r.Key)
	case *v3electionpb.CampaignResponse:
		if r.Leader != nil {
			r.Leader.Key = key(r.Leader.Key)
			lease(&r.Leader.Lease)
		}
	case *v3electionpb.LeaderResponse:
		if r.Kv != nil {
			r.Kv.Key = key(r.Kv.Key)
			lease(&r.Kv.Lease)
		}
	case *pb.RangeResponse:
		for _, kv := range r.Kvs {
			kv.Key = key(kv.Key)
			lease(&kv.Lease)
		}
	}
	header := responseHeader(resp)
	var problems []string
	if header == nil {
		problems = append(problems, side.s.name+": response has no header")
	} else {
		problems = side.s.checkHeader(header, true)
	}
	return renderOutcome(outcome{resp: resp}), problems
}

func lockSteps() []lockStep {
	type call = func(ctx context.Context, side *lockSide) (proto.Message, error)
	grant := func(id int64) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: 60})
		}
	}
	revoke := func(id int64) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id})
		}
	}
	keys := func(prefix string) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			end := []byte(prefix)
			end[len(end)-1]++
			return side.s.kv.Range(ctx, &pb.RangeRequest{Key: []byte(prefix), RangeEnd: end})
		}
	}
	// keysWithout is keys(prefix) once key is gone, or after 5s: a server
	// deletes the key of a canceled request after the client has gone.
	keysWithout := func(prefix, key string) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			deadline := time.Now().Add(5 * time.Second)
			for {
				resp, err := side.s.kv.Range(ctx, &pb.RangeRequest{Key: []byte(key)})
				if err != nil || len(resp.Kvs) == 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			return keys(prefix)(ctx, side)
		}
	}
	lock := func(name string, lease int64) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.lock.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: lease})
		}
	}
	unlock := func(key string) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.lock.Unlock(ctx, &v3lockpb.UnlockRequest{Key: []byte(key)})
		}
	}
	campaign := func(name string, lease int64, value string) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			resp, err := side.elect.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte(name), Lease: lease, Value: []byte(value)})
			if err == nil {
				side.mu.Lock()
				side.leaders[fmt.Sprintf("%s/%x", name, lease)] = resp.Leader
				side.mu.Unlock()
			}
			return resp, err
		}
	}
	// leaderKey is the leader key a campaign won (by its key), changed by
	// edit.
	leaderKey := func(side *lockSide, key string, edit func(*v3electionpb.LeaderKey)) *v3electionpb.LeaderKey {
		side.mu.Lock()
		defer side.mu.Unlock()
		lk := proto.Clone(side.leaders[key]).(*v3electionpb.LeaderKey)
		if edit != nil {
			edit(lk)
		}
		return lk
	}
	proclaim := func(key, value string, edit func(*v3electionpb.LeaderKey)) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.elect.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: leaderKey(side, key, edit), Value: []byte(value)})
		}
	}
	resign := func(key string, edit func(*v3electionpb.LeaderKey)) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.elect.Resign(ctx, &v3electionpb.ResignRequest{Leader: leaderKey(side, key, edit)})
		}
	}
	leader := func(name string) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.elect.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte(name)})
		}
	}
	// background starts c on its own context, which cancel(id) ends; its
	// answer is collected by await(id) or checked by pending(id). It answers
	// what c answered if that came at once (within a short wait): a step
	// that was meant to wait then shows the difference.
	background := func(id string, c call) call {
		return func(_ context.Context, side *lockSide) (proto.Message, error) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			done := make(chan lockResult, 1)
			side.mu.Lock()
			side.waiting[id], side.cancels[id] = done, cancel
			side.mu.Unlock()
			go func() {
				resp, err := c(ctx, side)
				done <- lockResult{resp, err}
			}()
			return pendingOn(done, 300*time.Millisecond)
		}
	}
	wait := func(id string, d time.Duration) call {
		return func(_ context.Context, side *lockSide) (proto.Message, error) {
			side.mu.Lock()
			done := side.waiting[id]
			side.mu.Unlock()
			return pendingOn(done, d)
		}
	}
	pending := func(id string) call { return wait(id, 300*time.Millisecond) }
	await := func(id string) call { return wait(id, 10*time.Second) }
	cancel := func(id string) call {
		return func(ctx context.Context, side *lockSide) (proto.Message, error) {
			side.mu.Lock()
			side.cancels[id]()
			done := side.waiting[id]
			side.mu.Unlock()
			return pendingOn(done, 10*time.Second)
		}
	}
	observe := func(name string) call {
		return func(_ context.Context, side *lockSide) (proto.Message, error) {
			ctx, cancel := context.WithCancel(context.Background())
			stream, err := side.elect.Observe(ctx, &v3electionpb.LeaderRequest{Name: []byte(name)})
			if err != nil {
				cancel()
				return nil, err
			}
			side.mu.Lock()
			side.observe[name], side.cancels["observe "+name] = stream, cancel
			side.mu.Unlock()
			// An answer to compare: the stream answers nothing until there
			// is a leader.
			return side.s.kv.Range(ctx, &pb.RangeRequest{Key: []byte("el/")})
		}
	}
	// observed is the next answer of the Observe stream on name.
	observed := func(name string) call {
		return func(_ context.Context, side *lockSide) (proto.Message, error) {
			side.mu.Lock()
			stream := side.observe[name]
			side.mu.Unlock()
			done := make(chan lockResult, 1)
			go func() {
				resp, err := stream.Recv()
				done <- lockResult{resp, err}
			}()
			return pendingOn(done, 10*time.Second)
		}
	}
	// The keys of leases 100, 101, 102 under lk, and of 110 to 113 under el.
	a, b, c := "lk/64", "lk/65", "lk/66"
	ea, eb, ec := "el/6e", "el/6f", "el/70"
	notOurs := func(lk *v3electionpb.LeaderKey) { lk.Rev += 1000 }
	noKey := func(lk *v3electionpb.LeaderKey) { lk.Rev = 0; lk.Key = nil; lk.Name = nil }
	return []lockStep{
		{"grant 100", "ok", grant(100)},
		{"grant 101", "ok", grant(101)},
		{"grant 102", "ok", grant(102)},
		{"grant 103", "ok", grant(103)},
		{"grant 110", "ok", grant(110)},
		{"grant 111", "ok", grant(111)},
		{"grant 112", "ok", grant(112)},
		{"grant 113", "ok", grant(113)},

		// Lock.
		{"lock lk with 100", "ok", lock("lk", 100)},
		{"lock lk with 100 again", "ok", lock("lk", 100)},
		{"lock lk with 101 waits", "waiting", background("b", lock("lk", 101))},
		{"lock lk with 102 waits", "waiting", background("c", lock("lk", 102))},
		{"keys of lk", "ok", keys("lk/")},
		{"unlock 102's key (a waiter's)", "ok", unlock(c)},
		{"the lock with 102 still waits", "waiting", pending("c")},
		{"unlock 100's key", "ok", unlock(a)},
		{"the lock with 101 is held", "ok", await("b")},
		{"the lock with 102 still waits, for 101", "waiting", pending("c")},
		{"unlock 101's key", "ok", unlock(b)},
		{"the lock with 102 finds its key gone", "session is expired", await("c")},
		{"lock lk with 100 once more", "ok", lock("lk", 100)},
		{"lock lk with 102 waits again", "waiting", background("c2", lock("lk", 102))},
		{"cancel the lock with 102", "context canceled", cancel("c2")},
		{"keys of lk after the cancel", "ok", keysWithout("lk/", c)},
		{"lock lk with 101 waits again", "waiting", background("b2", lock("lk", 101))},
		{"revoke 100, the holder", "ok", revoke(100)},
		{"the lock with 101 is held", "ok", await("b2")},
		{"unlock an absent key", "ok", unlock("lk/nothing")},
		{"unlock an empty key", "key is not provided", unlock("")},
		{"lock with an unknown lease", "requested lease not found", lock("lk", 150)},
		{"lock an empty name", "ok", lock("", 103)},
		{"lock with lease 0 (a lease of the server's)", "ok", lock("zero", 0)},
		{"keys of zero", "ok", keys("zero/")},

		// Election.
		{"no leader yet", "election: no leader", leader("el")},
		{"observe el", "ok", observe("el")},
		{"campaign in el with 110", "ok", campaign("el", 110, "a")},
		{"observed a", "ok", observed("el")},
		{"the leader is a", "ok", leader("el")},
		{"campaign with 110 again, the same value", "ok", campaign("el", 110, "a")},
		{"campaign with 110 again, a new value", "ok", campaign("el", 110, "a1")},
		{"observed a1", "ok", observed("el")},
		{"campaign in el with 112 waits", "waiting", background("ec", campaign("el", 112, "c"))},
		{"proclaim a2", "ok", proclaim(ea, "a2", nil)},
		{"observed a2", "ok", observed("el")},
		{"proclaim by a leadership that is not ours", "election: not leader", proclaim(ea, "x", notOurs)},
		{"proclaim by a leader key without a key", "", proclaim(ea, "x", noKey)},
		{"proclaim without a leader key", `"leader" field must be provided`, func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.elect.Proclaim(ctx, &v3electionpb.ProclaimRequest{Value: []byte("x")})
		}},
		{"resign without a leader key", `"leader" field must be provided`, func(ctx context.Context, side *lockSide) (proto.Message, error) {
			return side.elect.Resign(ctx, &v3electionpb.ResignRequest{})
		}},
		{"resign a leadership that is not ours", "ok", resign(ea, notOurs)},
		{"the campaign with 112 still waits", "waiting", pending("ec")},
		{"the leader is still a2", "ok", leader("el")},
		{"resign 110", "ok", resign(ea, nil)},
		{"the campaign with 112 wins", "ok", await("ec")},
		{"observed c", "ok", observed("el")},
		{"campaign in el with 111 waits", "waiting", background("eb", campaign("el", 111, "b"))},
		{"campaign in el with 113 waits", "waiting", background("ed", campaign("el", 113, "d"))},
		{"cancel the campaign with 113", "context canceled", cancel("ed")},
		{"keys of el after the cancel", "ok", keysWithout("el/", "el/71")},
		{"revoke 112, the leader", "ok", revoke(112)},
		{"the campaign with 111 wins", "ok", await("eb")},
		{"observed b", "ok", observed("el")},
		{"proclaim b2", "ok", proclaim(eb, "b2", nil)},
		{"observed b2", "ok", observed("el")},
		{"resign 112, whose lease is gone", "ok", resign(ec, nil)},
		{"campaign with an unknown lease", "requested lease not found", campaign("el", 150, "x")},
		{"campaign with lease 0 waits", "waiting", background("e0", campaign("el", 0, "zero"))},
		{"resign 111", "ok", resign(eb, nil)},
		{"the campaign with lease 0 wins", "ok", await("e0")},
		{"observed zero", "ok", observed("el")},
		{"the leader is zero", "ok", leader("el")},
		{"proclaim by the lease-0 leader naming lease 0 (a new lease of the server's)", "ok", func(ctx context.Context, side *lockSide) (proto.Message, error) {
			side.mu.Lock()
			var lk *v3electionpb.LeaderKey
			for _, l := range side.leaders {
				if !knownLease(l.Lease) {
					lk = proto.Clone(l).(*v3electionpb.LeaderKey)
				}
			}
			side.mu.Unlock()
			lk.Lease = 0
			return side.elect.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: lk, Value: []byte("zero2")})
		}},
		{"the leader is zero2", "ok", leader("el")},
		{"the leader of an empty name", "", leader("")},
		{"the leader of a name without candidates", "election: no leader", leader("nobody")},
	}
}

// responseHeader is the header of an answer of the etcd API (its field
// "header"), or nil.
func responseHeader(m proto.Message) *pb.ResponseHeader {
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("header")
	if fd == nil || fd.Message() == nil || !r.Has(fd) {
		return nil
	}
	h, _ := r.Get(fd).Message().Interface().(*pb.ResponseHeader)
	return h
}

// pendingOn answers what done delivers within d, or errStillWaiting.
func pendingOn(done chan lockResult, d time.Duration) (proto.Message, error) {
	select {
	case r := <-done:
		// Leave it for a later look.
		done <- r
		return r.resp, r.err
	case <-time.After(d):
		return nil, errStillWaiting
	}
}
