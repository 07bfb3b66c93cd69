package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/plinthdb/plinth/internal/testmember"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// testCluster is a cluster of in-process members on loopback.
type testCluster struct {
	t       *testing.T
	cfgs    []Config
	servers []*Server // nil when stopped
}

// freeLoopbackURL picks a free port below the ephemeral range: members are
// restarted on their ports (see testmember.FreeAddr).
func freeLoopbackURL(t *testing.T) url.URL {
	return url.URL{Scheme: "http", Host: testmember.FreeAddr(t)}
}

// startTestCluster is newTestCluster with every member started.
func startTestCluster(t *testing.T, n int, token string) *testCluster {
	t.Helper()
	c := newTestCluster(t, n, token)
	for i := range n {
		c.start(i)
	}
	return c
}

// newTestCluster configures n members of a new cluster, none started (tests
// change a member's configuration before starting it).
func newTestCluster(t *testing.T, n int, token string) *testCluster {
	t.Helper()
	c := &testCluster{t: t, servers: make([]*Server, n)}
	initial := map[string][]url.URL{}
	peers := make([]url.URL, n)
	for i := range n {
		peers[i] = freeLoopbackURL(t)
		initial[fmt.Sprintf("m%d", i)] = []url.URL{peers[i]}
	}
	for i := range n {
		client := freeLoopbackURL(t)
		c.cfgs = append(c.cfgs, Config{
			Name:                fmt.Sprintf("m%d", i),
			DataDir:             t.TempDir(),
			ListenClientURLs:    []url.URL{client},
			AdvertiseClientURLs: []url.URL{client},
			ListenPeerURLs:      []url.URL{peers[i]},
			AdvertisePeerURLs:   []url.URL{peers[i]},
			InitialCluster:      initial,
			InitialClusterState: "new",
			InitialClusterToken: token,
			MaxRequestBytes:     1572864,
			HeartbeatInterval:   10 * time.Millisecond,
			ElectionTimeout:     100 * time.Millisecond,
			SnapshotCount:       1000,
			Logger:              testLogger(fmt.Sprintf("m%d", i)),
		})
	}
	t.Cleanup(func() {
		for i := range c.servers {
			c.stop(i)
		}
	})
	return c
}

// testLogger discards, unless PLINTH_TEST_LOG is set: then members log to
// stderr, each line marked with the member's name.
func testLogger(name string) *slog.Logger {
	if os.Getenv("PLINTH_TEST_LOG") == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("member", name)
}

func (c *testCluster) start(i int) {
	c.t.Helper()
	srv, err := New(c.cfgs[i])
	if err != nil {
		c.t.Fatalf("member %d: %v", i, err)
	}
	if err := srv.Start(); err != nil {
		c.t.Fatalf("member %d: %v", i, err)
	}
	c.servers[i] = srv
}

func (c *testCluster) stop(i int) {
	if c.servers[i] != nil {
		c.servers[i].Stop()
		c.servers[i] = nil
	}
}

func (c *testCluster) client(i int) *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{c.cfgs[i].AdvertiseClientURLs[0].Host},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// rawKV is a KV client of member i without the etcd client's retries.
func (c *testCluster) rawKV(i int) etcdserverpb.KVClient {
	c.t.Helper()
	conn, err := grpc.NewClient(c.cfgs[i].AdvertiseClientURLs[0].Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = conn.Close() })
	return etcdserverpb.NewKVClient(conn)
}

// leader waits until the running members agree on a leader and returns its
// index.
func (c *testCluster) leader(ctx context.Context) int {
	c.t.Helper()
	for {
		lead, agreed := uint64(0), true
		for _, s := range c.servers {
			if s == nil {
				continue
			}
			l := s.node.Leader()
			if l == 0 || (lead != 0 && l != lead) {
				agreed = false
			}
			lead = l
		}
		if agreed && lead != 0 {
			for i, s := range c.servers {
				if s != nil && s.memberID == lead {
					return i
				}
			}
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("no agreed leader among the running members")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestClusterReplicatesAndElects(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "replicate")
	lead := c.leader(ctx)
	follower := (lead + 1) % 3

	// A write sent to a follower reaches the leader.
	clis := []*clientv3.Client{c.client(0), c.client(1), c.client(2)}
	put, err := clis[follower].Put(ctx, "k", "v1")
	if err != nil {
		t.Fatalf("put through a follower: %v", err)
	}
	for i, cli := range clis {
		// Linearizable reads on every member see the write at once.
		get, err := cli.Get(ctx, "k")
		if err != nil || len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "v1" || get.Header.Revision != put.Header.Revision {
			t.Fatalf("linearizable get on member %d: %+v %v", i, get, err)
		}
		if get.Header.ClusterId != put.Header.ClusterId {
			t.Fatalf("member %d answers for cluster %x, the put's was %x", i, get.Header.ClusterId, put.Header.ClusterId)
		}
	}
	members, err := clis[0].MemberList(ctx)
	if err != nil || len(members.Members) != 3 {
		t.Fatalf("member list: %+v %v", members, err)
	}
	for _, m := range members.Members {
		if !strings.HasPrefix(m.Name, "m") || len(m.PeerURLs) != 1 {
			t.Fatalf("member %+v lacks its name or peer URL", m)
		}
	}

	// The leader goes; the others elect a new one and keep serving.
	term := c.servers[lead].node.Term()
	c.stop(lead)
	newLead := c.leader(ctx)
	if got := c.servers[newLead].node.Term(); got <= term {
		t.Fatalf("new leader's term %d, want above %d", got, term)
	}
	survivor := (lead + 1) % 3
	if _, err := clis[survivor].Put(ctx, "k", "v2"); err != nil {
		t.Fatalf("put after the leader stopped: %v", err)
	}

	// The old leader comes back and catches up from the log.
	c.start(lead)
	cli := c.client(lead)
	for {
		get, err := cli.Get(ctx, "k", clientv3.WithSerializable())
		if err == nil && len(get.Kvs) == 1 && string(get.Kvs[0].Value) == "v2" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("restarted member never saw v2: %+v %v", get, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A member of another cluster (another token) is refused: a member never
// joins the wrong cluster, even when its peer URLs are right.
func TestClusterRefusesAMemberOfAnotherCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := newTestCluster(t, 3, "one")
	c.start(0)
	c.start(1)
	c.leader(ctx)
	// Member 2 is started with another token: another cluster ID, and
	// other member IDs. Whatever it sends is refused, so the cluster's
	// leader never changes and it never gets a leader of its own.
	c.cfgs[2].InitialClusterToken = "two"
	c.start(2)
	time.Sleep(500 * time.Millisecond)
	if l := c.servers[2].node.Leader(); l != 0 {
		t.Fatalf("the member of another cluster found leader %x", l)
	}
}

// A member that was down while the log moved on past what it keeps catches up
// from a snapshot of the leader's state, and its state then continues the
// cluster's exactly: versions, create revisions, a key deleted meanwhile.
func TestClusterCatchesUpBySnapshot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 3, "snapshot")
	for i := range 3 {
		c.cfgs[i].SnapshotCount = 20
		c.start(i)
	}
	lead := c.leader(ctx)
	lagging := (lead + 1) % 3
	cli := c.client(lead)
	// Keys the lagging member will have seen before it stops.
	for _, k := range []string{"kept", "deleted", "overwritten"} {
		if _, err := cli.Put(ctx, k, "before"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(ctx, t, func() bool { return c.servers[lagging].node.AppliedIndex() >= c.servers[lead].node.AppliedIndex() })
	c.stop(lagging)

	for i := range 200 {
		if _, err := cli.Put(ctx, fmt.Sprintf("new/%03d", i%50), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "overwritten", "during"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	c.start(lagging)
	lcli := c.client(lagging)
	waitFor(ctx, t, func() bool { return c.servers[lagging].node.SnapshotsInstalled() > 0 })

	// Writes after the install: on the snapshot's versions, not on stale
	// ones the member kept in memory from before it stopped.
	if _, err := lcli.Put(ctx, "overwritten", "after"); err != nil {
		t.Fatal(err)
	}
	if _, err := lcli.Put(ctx, "deleted", "again"); err != nil {
		t.Fatal(err)
	}
	if _, err := lcli.Put(ctx, "new/000", "after"); err != nil {
		t.Fatal(err)
	}
	want, err := cli.Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, func() bool { return c.servers[lagging].kv.Rev() == want.Header.Revision })
	got, err := lcli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithSerializable())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != len(want.Kvs) {
		t.Fatalf("lagging member has %d keys, the leader %d", len(got.Kvs), len(want.Kvs))
	}
	for i := range want.Kvs {
		if !proto.Equal(got.Kvs[i], want.Kvs[i]) {
			t.Fatalf("key %d: lagging member has %v, the leader %v", i, got.Kvs[i], want.Kvs[i])
		}
	}
	for _, kv := range got.Kvs {
		switch string(kv.Key) {
		case "overwritten":
			if kv.Version != 3 {
				t.Fatalf("overwritten: version %d, want 3", kv.Version)
			}
		case "deleted":
			if kv.Version != 1 {
				t.Fatalf("deleted then put again: version %d, want 1 (a create)", kv.Version)
			}
		}
	}

	// Every member hashes the same history at the same revision, the one
	// that installed a snapshot (whose history starts at the snapshot)
	// too, after a compaction that leaves it nothing the others kept.
	compactAt := want.Header.Revision - 5
	if _, err := cli.Compact(ctx, compactAt); err != nil {
		t.Fatal(err)
	}
	var hashes []*clientv3.HashKVResponse
	for i := range 3 {
		waitFor(ctx, t, func() bool { return c.servers[i].kv.CompactRev() == compactAt })
		mcli := c.client(i)
		h, err := mcli.HashKV(ctx, mcli.Endpoints()[0], want.Header.Revision)
		if err != nil {
			t.Fatal(err)
		}
		if h.HashRevision != want.Header.Revision || h.CompactRevision != compactAt {
			t.Fatalf("member %d hashed revision %d with compaction %d, want %d and %d", i, h.HashRevision, h.CompactRevision, want.Header.Revision, compactAt)
		}
		hashes = append(hashes, h)
	}
	for i, h := range hashes[1:] {
		if h.Hash != hashes[0].Hash {
			t.Fatalf("member %d hashes %x at revision %d, member 0 %x", i+1, h.Hash, h.HashRevision, hashes[0].Hash)
		}
	}
}

func waitFor(ctx context.Context, t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met in time")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// addMember prepares the configuration of a new member of c, not in its
// initial cluster, on free ports.
func (c *testCluster) addMember(name string) int {
	peer, client := freeLoopbackURL(c.t), freeLoopbackURL(c.t)
	cfg := c.cfgs[0]
	cfg.Name = name
	cfg.DataDir = c.t.TempDir()
	cfg.ListenClientURLs, cfg.AdvertiseClientURLs = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerURLs, cfg.AdvertisePeerURLs = []url.URL{peer}, []url.URL{peer}
	cfg.Logger = testLogger(name)
	c.cfgs = append(c.cfgs, cfg)
	c.servers = append(c.servers, nil)
	return len(c.cfgs) - 1
}

func (c *testCluster) waitMembers(ctx context.Context, cli *clientv3.Client, cond func([]*etcdserverpb.Member) bool) []*etcdserverpb.Member {
	c.t.Helper()
	for {
		resp, err := cli.MemberList(ctx)
		if err == nil && cond(resp.Members) {
			return resp.Members
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("members never as wanted: %v %v", resp, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitAllActive waits until the leader has heard from every member in its
// term: before that a membership change is refused as unhealthy, as etcd's
// is, before anything else about it is looked at (a follower that has not
// acknowledged an entry of the new leader's yet is not active).
func (c *testCluster) waitAllActive(ctx context.Context) {
	c.t.Helper()
	waitFor(ctx, c.t, func() bool {
		p := c.servers[c.leader(ctx)].node.Progress()
		if p == nil {
			return false
		}
		for _, m := range p.Members {
			if !m.RecentActive {
				return false
			}
		}
		return true
	})
}

func allPublished(ms []*etcdserverpb.Member) bool {
	return !slices.ContainsFunc(ms, func(m *etcdserverpb.Member) bool { return m.Name == "" || len(m.ClientURLs) == 0 })
}

// The etcd way: member add, then start the member with
// --initial-cluster-state=existing; promote a learner; remove a member.
func TestClusterMembershipChanges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "membership")
	lead := c.leader(ctx)
	follower := (lead + 1) % 3
	cli := c.client(follower) // changes sent to a follower reach the leader
	if _, err := cli.Put(ctx, "before", "1"); err != nil {
		t.Fatal(err)
	}
	// Wait until every member has published its client URLs: a follower
	// forwards changes to the leader's.
	c.waitMembers(ctx, cli, allPublished)
	c.waitAllActive(ctx)

	n := c.addMember("learner")
	peerURL := c.cfgs[n].AdvertisePeerURLs[0].String()
	if _, err := cli.MemberAdd(ctx, []string{c.cfgs[0].AdvertisePeerURLs[0].String()}); err != rpctypes.ErrPeerURLExist {
		t.Fatalf("adding a member with a used peer URL: %v, want %v", err, rpctypes.ErrPeerURLExist)
	}
	add, err := cli.MemberAddAsLearner(ctx, []string{peerURL})
	if err != nil {
		t.Fatalf("member add --learner: %v", err)
	}
	if !add.Member.IsLearner || len(add.Members) != 4 {
		t.Fatalf("member add answered %+v", add)
	}
	if _, err := cli.MemberAddAsLearner(ctx, []string{"http://127.0.0.1:1"}); err != rpctypes.ErrTooManyLearners {
		t.Fatalf("a second learner: %v, want %v", err, rpctypes.ErrTooManyLearners)
	}
	if _, err := cli.MemberPromote(ctx, c.servers[0].memberID); err != rpctypes.ErrMemberNotLearner {
		t.Fatalf("promoting a voter: %v, want %v", err, rpctypes.ErrMemberNotLearner)
	}
	// Not started yet: it cannot be in sync.
	if _, err := cli.MemberPromote(ctx, add.Member.ID); err != rpctypes.ErrMemberLearnerNotReady {
		t.Fatalf("promoting a learner that never started: %v, want %v", err, rpctypes.ErrMemberLearnerNotReady)
	}

	c.cfgs[n].InitialClusterState = "existing"
	c.cfgs[n].InitialCluster = map[string][]url.URL{}
	for i := range c.cfgs {
		c.cfgs[n].InitialCluster[c.cfgs[i].Name] = c.cfgs[i].AdvertisePeerURLs
	}
	c.start(n)
	if got := c.servers[n].memberID; got != add.Member.ID {
		t.Fatalf("the new member took ID %x, member add gave %x", got, add.Member.ID)
	}
	learnerStatus := func() bool {
		st, err := c.client(n).Status(ctx, c.cfgs[n].AdvertiseClientURLs[0].Host)
		if err != nil {
			t.Fatal(err)
		}
		return st.IsLearner
	}
	waitFor(ctx, t, learnerStatus)
	checkLearnerServes(ctx, t, c.client(n))
	for {
		_, err := cli.MemberPromote(ctx, add.Member.ID)
		if err == nil {
			break
		}
		if err != rpctypes.ErrMemberLearnerNotReady || ctx.Err() != nil {
			t.Fatalf("promote: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(ctx, t, func() bool { return !learnerStatus() })
	ncli := c.client(n)
	if _, err := ncli.Put(ctx, "after", "1"); err != nil {
		t.Fatalf("put on the promoted member: %v", err)
	}
	get, err := ncli.Get(ctx, "before")
	if err != nil || len(get.Kvs) != 1 {
		t.Fatalf("the new member lacks what was written before it came: %+v %v", get, err)
	}

	// Remove a follower that is not the new member: the cluster goes on.
	gone := (lead + 2) % 3
	if _, err := cli.MemberRemove(ctx, c.servers[gone].memberID); err != nil {
		t.Fatalf("member remove: %v", err)
	}
	waitFor(ctx, t, func() bool { return c.servers[gone].Err() != nil })
	if !errors.Is(c.servers[gone].Err(), ErrRemoved) {
		t.Fatalf("the removed member stopped with %v, want ErrRemoved", c.servers[gone].Err())
	}
	if _, err := cli.MemberRemove(ctx, c.servers[gone].memberID); err != rpctypes.ErrMemberNotFound {
		t.Fatalf("removing a removed member: %v, want %v", err, rpctypes.ErrMemberNotFound)
	}
	c.stop(gone)
	if _, err := ncli.Put(ctx, "after-remove", "1"); err != nil {
		t.Fatalf("put after the removal: %v", err)
	}
	// The removed member's data dir cannot serve again.
	if _, err := New(c.cfgs[gone]); !errors.Is(err, ErrRemoved) {
		t.Fatalf("restarting a removed member: %v, want ErrRemoved", err)
	}
}

// plinth --join: one step, learner first, promoted once caught up, with a
// snapshot when the log moved on.
func TestClusterJoin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 3, "join")
	for i := range 3 {
		c.cfgs[i].SnapshotCount = 20
		c.start(i)
	}
	c.leader(ctx)
	cli := c.client(0)
	for i := range 100 {
		if _, err := cli.Put(ctx, fmt.Sprintf("k%02d", i%30), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	c.waitMembers(ctx, cli, allPublished)
	c.waitAllActive(ctx)
	n := c.addMember("joiner")
	c.cfgs[n].Join = "http://" + c.cfgs[1].AdvertiseClientURLs[0].Host
	c.start(n)
	members := c.waitMembers(ctx, cli, func(ms []*etcdserverpb.Member) bool {
		return len(ms) == 4 && !slices.ContainsFunc(ms, func(m *etcdserverpb.Member) bool { return m.IsLearner || m.Name == "" })
	})
	if i := slices.IndexFunc(members, func(m *etcdserverpb.Member) bool { return m.Name == "joiner" }); i < 0 {
		t.Fatalf("no member named joiner in %v", members)
	}
	if c.servers[n].node.SnapshotsInstalled() == 0 {
		t.Fatalf("the joiner caught up without a snapshot, though the log was truncated")
	}
	// The member list read above may show the joiner promoted a little
	// before the joiner has applied that itself; the put through it below,
	// after a restart, needs it to be a voter.
	waitFor(ctx, t, func() bool { return !c.servers[n].learner.Load() })
	jcli := c.client(n)
	get, err := jcli.Get(ctx, "k29", clientv3.WithSerializable())
	if err != nil || len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "89" {
		t.Fatalf("joiner's k29: %+v %v", get, err)
	}
	// A restart with the same flags (--join included) keeps its identity.
	id := c.servers[n].memberID
	c.stop(n)
	c.start(n)
	if c.servers[n].memberID != id {
		t.Fatalf("restarted joiner is %x, was %x", c.servers[n].memberID, id)
	}
	if _, err := c.client(n).Put(ctx, "from-joiner", "1"); err != nil {
		t.Fatalf("put through the restarted joiner: %v", err)
	}
}

// A --join that crashed after its learner was added, before it stored its
// identity, finds that learner by its peer URLs on the next start and
// becomes it, rather than failing on a peer URL already in use.
func TestClusterJoinAfterCrashedAdd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "join-again")
	c.leader(ctx)
	cli := c.client(0)
	c.waitMembers(ctx, cli, allPublished)
	c.waitAllActive(ctx)
	n := c.addMember("joiner")
	added, err := cli.MemberAddAsLearner(ctx, []string{c.cfgs[n].AdvertisePeerURLs[0].String()})
	if err != nil {
		t.Fatalf("add the learner the crashed join left: %v", err)
	}
	c.cfgs[n].Join = "http://" + c.cfgs[2].AdvertiseClientURLs[0].Host
	c.start(n)
	if c.servers[n].memberID != added.Member.ID {
		t.Fatalf("the joiner took ID %x, want the learner added before, %x", c.servers[n].memberID, added.Member.ID)
	}
	members := c.waitMembers(ctx, cli, func(ms []*etcdserverpb.Member) bool {
		return len(ms) == 4 && !slices.ContainsFunc(ms, func(m *etcdserverpb.Member) bool { return m.IsLearner || m.Name == "" })
	})
	if i := slices.IndexFunc(members, func(m *etcdserverpb.Member) bool { return m.ID == added.Member.ID }); i < 0 || members[i].Name != "joiner" {
		t.Fatalf("members after the join: %v", members)
	}
}

// A lone member grows to three as etcd's do: a voter added with member add
// and started with --initial-cluster-state=existing, then a third with
// --join, promoted once in sync. Every check that protects a quorum lets a
// lone member take a second one (there is no quorum of others to protect).
func TestClusterGrowsFromOneMember(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 1, "grow")
	c.leader(ctx)
	cli := c.client(0)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	c.waitMembers(ctx, cli, allPublished)

	n := c.addMember("second")
	add, err := cli.MemberAdd(ctx, []string{c.cfgs[n].AdvertisePeerURLs[0].String()})
	if err != nil {
		t.Fatalf("member add to a lone member: %v; etcd allows it", err)
	}
	c.cfgs[n].InitialClusterState = "existing"
	c.cfgs[n].InitialCluster = map[string][]url.URL{c.cfgs[0].Name: c.cfgs[0].AdvertisePeerURLs, "second": c.cfgs[n].AdvertisePeerURLs}
	c.start(n)
	if c.servers[n].memberID != add.Member.ID {
		t.Fatalf("the second member took ID %x, member add gave %x", c.servers[n].memberID, add.Member.ID)
	}
	c.waitMembers(ctx, cli, func(ms []*etcdserverpb.Member) bool { return len(ms) == 2 && allPublished(ms) })

	j := c.addMember("third")
	c.cfgs[j].Join = "http://" + c.cfgs[0].AdvertiseClientURLs[0].Host
	c.start(j)
	c.waitMembers(ctx, cli, func(ms []*etcdserverpb.Member) bool {
		return len(ms) == 3 && allPublished(ms) && !slices.ContainsFunc(ms, func(m *etcdserverpb.Member) bool { return m.IsLearner })
	})
	// That is the first member's view. The third serves linearizable reads
	// once it has applied its own promotion, which may come a little later,
	// as with etcd; until then it refuses them as a learner.
	waitFor(ctx, t, func() bool { return !c.servers[j].learner.Load() })
	get, err := c.client(j).Get(ctx, "k")
	if err != nil || len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "v" {
		t.Fatalf("the third member reads k: %+v %v", get, err)
	}
}

// The quorum checks of membership changes, as etcd v3.7 makes them and
// answers them: a member may not be added (learner or voter) while the
// active voters would not form a quorum with the newcomer counted as down;
// a voter may not be added while too few have started; a voter that is down
// may be removed.
func TestClusterMembershipQuorumChecks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "quorum-checks")
	lead := c.leader(ctx)
	cli := c.client(lead)
	c.waitMembers(ctx, cli, allPublished)

	// Two voters that never start: five voters, three started. (Until the
	// leader has heard from both followers in its term, it answers
	// ErrUnhealthy.)
	for _, u := range []string{"http://127.0.0.1:1", "http://127.0.0.1:2"} {
		_, err := cli.MemberAdd(ctx, []string{u})
		for err == rpctypes.ErrUnhealthy && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			_, err = cli.MemberAdd(ctx, []string{u})
		}
		if err != nil {
			t.Fatalf("member add %s: %v", u, err)
		}
	}
	// A sixth voter: three started of six is below a quorum.
	if _, err := cli.MemberAdd(ctx, []string{"http://127.0.0.1:3"}); err != rpctypes.ErrMemberNotEnoughStarted {
		t.Fatalf("a voter while too few started: %v, want %v", err, rpctypes.ErrMemberNotEnoughStarted)
	}
	// Before the peer URL check, as in etcd.
	if _, err := cli.MemberAdd(ctx, []string{"http://127.0.0.1:1"}); err != rpctypes.ErrMemberNotEnoughStarted {
		t.Fatalf("a voter with a taken peer URL while too few started: %v, want %v", err, rpctypes.ErrMemberNotEnoughStarted)
	}
	// A learner: three active of a quorum of six (four) is too few.
	if _, err := cli.MemberAddAsLearner(ctx, []string{"http://127.0.0.1:4"}); err != rpctypes.ErrUnhealthy {
		t.Fatalf("a learner while the active voters are no quorum of the grown cluster: %v, want %v", err, rpctypes.ErrUnhealthy)
	}
	// The members that never started are down: they may go.
	members := c.waitMembers(ctx, cli, func([]*etcdserverpb.Member) bool { return true })
	for _, m := range members {
		if m.Name == "" {
			if _, err := cli.MemberRemove(ctx, m.ID); err != nil {
				t.Fatalf("member remove of a member that never started: %v", err)
			}
		}
	}
	if _, err := cli.MemberAddAsLearner(ctx, []string{"http://127.0.0.1:4"}); err != nil {
		t.Fatalf("a learner in a healthy cluster: %v", err)
	}
}

// A long apply (a DeleteRange of 100,000 keys) holds the apply loop for a
// long time; the raft loop goes on heartbeating meanwhile, so no follower
// starts an election.
func TestClusterLongApplyKeepsLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 100,000 keys")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c := newTestCluster(t, 3, "long-apply")
	for i := range 3 {
		c.cfgs[i].HeartbeatInterval = 20 * time.Millisecond
		c.cfgs[i].ElectionTimeout = 200 * time.Millisecond
		c.start(i)
	}
	lead := c.leader(ctx)
	cli := c.client(lead)
	const perTxn, workers = 128, 4
	// Under the race detector 12,000 keys take about as long to delete as
	// 100,000 without it: 0.9 s on an idle machine, over twice the longest
	// randomized election timeout (400 ms), so a delete that held up
	// heartbeats would cause an election. On a busy machine it takes
	// longer still, and must stay well inside the request timeout (5.4 s
	// here): 25,000 keys took 3.5-4.1 s at load average 5 and timed out at
	// load average 9.
	keys := 100_000
	if raceEnabled {
		keys = 12_000
	}
	value := strings.Repeat("v", 64)
	errC := make(chan error, workers)
	for w := range workers {
		go func() {
			for first := w * perTxn; first < keys; first += workers * perTxn {
				ops := make([]clientv3.Op, 0, perTxn)
				for k := first; k < min(first+perTxn, keys); k++ {
					ops = append(ops, clientv3.OpPut(fmt.Sprintf("bulk/%06d", k), value))
				}
				if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					errC <- err
					return
				}
			}
			errC <- nil
		}()
	}
	for range workers {
		if err := <-errC; err != nil {
			t.Fatal(err)
		}
	}
	term := c.servers[lead].node.Term()
	before := c.servers[lead].kv.Rev()
	start := time.Now()
	del, err := cli.Delete(ctx, "bulk/", clientv3.WithPrefix())
	took := time.Since(start)
	deletedAt := before + 1
	switch {
	case errors.Is(err, rpctypes.ErrTimeout):
		// On a loaded machine under the race detector the delete can
		// take longer than the request timeout (5.4 s here). It is
		// still applied, and what this test is about still holds.
		t.Logf("the delete answered %v after %v", err, took)
	case err != nil:
		t.Fatal(err)
	case del.Deleted != int64(keys) || del.Header.Revision != deletedAt:
		t.Fatalf("deleted %d keys at revision %d, want %d at %d", del.Deleted, del.Header.Revision, keys, deletedAt)
	}
	// Every member applies the delete; wait for the slowest.
	for i := range 3 {
		waitFor(ctx, t, func() bool { return c.servers[i].kv.Rev() == deletedAt })
	}
	if left, err := c.client(lead).Get(ctx, "bulk/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || left.Count != 0 {
		t.Fatalf("after the delete: %v keys left (%v)", left, err)
	}
	t.Logf("the delete took %v on the leader, %v until every member applied it", took, time.Since(start))
	for i, s := range c.servers {
		if got := s.node.Term(); got != term {
			t.Fatalf("member %d is at term %d after the delete, was %d: an election happened", i, got, term)
		}
		if l := s.node.Leader(); l != c.servers[lead].memberID {
			t.Fatalf("member %d follows %x, the leader was %x", i, l, c.servers[lead].memberID)
		}
	}
}

// partition is a network fault between in-process members: a member in
// isolated can neither send to nor hear from any other.
type partition struct {
	mu       sync.Mutex
	isolated map[uint64]bool
}

// startPartitionableCluster starts three members whose messages to each
// other pass through the partition returned.
func startPartitionableCluster(t *testing.T, token string) (*testCluster, *partition) {
	c := newTestCluster(t, 3, token)
	p := &partition{}
	for i := range 3 {
		c.cfgs[i].PeerBlocked = p.blocked
		c.start(i)
	}
	return c, p
}

func (p *partition) blocked(from, to uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.isolated[from] != p.isolated[to]
}

func (p *partition) set(ids ...uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.isolated = map[uint64]bool{}
	for _, id := range ids {
		p.isolated[id] = true
	}
}

// refused reports whether err is how etcd refuses a request that a member
// cut off from its leader cannot serve: timed out, or leader changed.
func refused(err error) bool {
	return errors.Is(err, rpctypes.ErrGRPCTimeout) || errors.Is(err, rpctypes.ErrGRPCLeaderChanged)
}

// A partitioned follower cannot serve linearizable reads (they fail, they do
// not hang), still serves serializable ones, and catches up once healed; a
// partitioned leader steps down (CheckQuorum), fails linearizable reads and
// writes, while the majority elects a new leader and keeps serving.
func TestClusterPartitions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, p := startPartitionableCluster(t, "partition")
	lead := c.leader(ctx)
	clis := []*clientv3.Client{c.client(0), c.client(1), c.client(2)}
	put, err := clis[lead].Put(ctx, "k", "v1")
	if err != nil {
		t.Fatal(err)
	}

	// One follower cut off, once it has v1.
	f := (lead + 1) % 3
	waitFor(ctx, t, func() bool { return c.servers[f].kv.Rev() >= put.Header.Revision })
	p.set(c.servers[f].memberID)
	if _, err := clis[lead].Put(ctx, "k", "v2"); err != nil {
		t.Fatalf("put with a follower partitioned: %v", err)
	}
	if get, err := clis[(lead+2)%3].Get(ctx, "k"); err != nil || string(get.Kvs[0].Value) != "v2" {
		t.Fatalf("linearizable get on the majority: %+v %v", get, err)
	}
	// A bare KV client: the etcd client retries a read that timed out
	// (Unavailable) until its own deadline, hiding the server's answer.
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	_, err = c.rawKV(f).Range(rctx, &etcdserverpb.RangeRequest{Key: []byte("k")})
	rcancel()
	if !refused(err) {
		t.Fatalf("a partitioned follower's linearizable read: %v, want %v or %v (not an answer, and not a hang)", err, rpctypes.ErrTimeout, rpctypes.ErrLeaderChanged)
	}
	if get, err := clis[f].Get(ctx, "k", clientv3.WithSerializable()); err != nil || string(get.Kvs[0].Value) != "v1" {
		t.Fatalf("serializable get on the partitioned follower: %+v %v", get, err)
	}
	p.set()
	waitFor(ctx, t, func() bool {
		get, err := clis[f].Get(ctx, "k", clientv3.WithSerializable())
		return err == nil && string(get.Kvs[0].Value) == "v2"
	})

	// The leader cut off.
	oldLead := c.servers[lead]
	term := oldLead.node.Term()
	p.set(oldLead.memberID)
	waitFor(ctx, t, func() bool { return oldLead.node.Leader() != oldLead.memberID })
	others := []int{(lead + 1) % 3, (lead + 2) % 3}
	waitFor(ctx, t, func() bool {
		l := c.servers[others[0]].node.Leader()
		return l != 0 && l != oldLead.memberID && l == c.servers[others[1]].node.Leader()
	})
	if got := c.servers[others[0]].node.Term(); got <= term {
		t.Fatalf("the majority's term is %d, not above the old leader's %d", got, term)
	}
	if _, err := clis[others[0]].Put(ctx, "k", "v3"); err != nil {
		t.Fatalf("put on the majority after the leader was cut off: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	_, werr := c.rawKV(lead).Put(wctx, &etcdserverpb.PutRequest{Key: []byte("k"), Value: []byte("lost")})
	_, rerr := c.rawKV(lead).Range(wctx, &etcdserverpb.RangeRequest{Key: []byte("k")})
	wcancel()
	if !refused(werr) || !refused(rerr) {
		t.Fatalf("the deposed leader answered put with %v and a linearizable get with %v, want %v or %v (not an answer, and not a hang)", werr, rerr, rpctypes.ErrTimeout, rpctypes.ErrLeaderChanged)
	}
	p.set()
	waitFor(ctx, t, func() bool {
		get, err := clis[lead].Get(ctx, "k", clientv3.WithSerializable())
		return err == nil && string(get.Kvs[0].Value) == "v3"
	})
	get, err := clis[lead].Get(ctx, "k")
	if err != nil || string(get.Kvs[0].Value) != "v3" || get.Kvs[0].Version != 3 {
		t.Fatalf("after healing, the old leader reads %+v %v; the write it took while cut off must not exist", get, err)
	}
}

// A member removed while cut off from its peers never receives the entry
// that removed it: the leader stops sending to a removed member. Once the
// network heals it must still learn of its removal, from the peers that
// refuse it, and stop; not campaign forever over the streams it opened before
// the cut.
func TestClusterRemovedWhileCutOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, p := startPartitionableCluster(t, "removed-cut-off")
	lead := c.leader(ctx)
	cli := c.client(lead)
	put, err := cli.Put(ctx, "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	f := (lead + 1) % 3
	waitFor(ctx, t, func() bool { return c.servers[f].kv.Rev() >= put.Header.Revision })
	p.set(c.servers[f].memberID)
	for {
		// Members connected for less than etcd's health interval refuse
		// a removal with ErrUnhealthy.
		_, err := cli.MemberRemove(ctx, c.servers[f].memberID)
		if err == nil {
			break
		}
		if err != rpctypes.ErrUnhealthy || ctx.Err() != nil {
			t.Fatalf("member remove of the cut-off member: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := cli.Put(ctx, "k", "after-removal"); err != nil {
		t.Fatal(err)
	}
	if c.servers[f].Err() != nil {
		t.Fatalf("the cut-off member stopped before the network healed: %v", c.servers[f].Err())
	}
	p.set()
	healed := time.Now()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	waitFor(wctx, t, func() bool { return c.servers[f].Err() != nil })
	if !errors.Is(c.servers[f].Err(), ErrRemoved) {
		t.Fatalf("the removed member stopped with %v, want ErrRemoved", c.servers[f].Err())
	}
	t.Logf("the removed member stopped %v after the network healed", time.Since(healed).Round(time.Millisecond))
}

// Maintenance.MoveLeader hands leadership to the member named, as etcd's:
// only the leader takes it, and only a voter can receive it.
func TestClusterMoveLeader(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := startTestCluster(t, 3, "move-leader")
	lead := c.leader(ctx)
	to := (lead + 1) % 3
	target := c.servers[to].memberID
	if _, err := c.client(to).MoveLeader(ctx, c.servers[(lead+2)%3].memberID); err != rpctypes.ErrNotLeader {
		t.Fatalf("move-leader sent to a follower: %v, want %v", err, rpctypes.ErrNotLeader)
	}
	if _, err := c.client(lead).MoveLeader(ctx, 12345); err != rpctypes.ErrBadLeaderTransferee {
		t.Fatalf("move-leader to an unknown member: %v, want %v", err, rpctypes.ErrBadLeaderTransferee)
	}
	if _, err := c.client(lead).MoveLeader(ctx, target); err != nil {
		t.Fatalf("move-leader: %v", err)
	}
	if got := c.leader(ctx); got != to {
		t.Fatalf("after move-leader, member %d leads, want %d", got, to)
	}
	if _, err := c.client(lead).Put(ctx, "after-move", "1"); err != nil {
		t.Fatalf("put after move-leader: %v", err)
	}
}

// checkLearnerServes checks that a learner serves what etcd's do (Status, a
// serializable range, a snapshot) and refuses everything else, unary calls
// and streams, with etcd's "rpc not supported for learner"; a member's
// corruption check still gets its hash.
func checkLearnerServes(ctx context.Context, t *testing.T, cli *clientv3.Client) {
	t.Helper()
	ep := cli.Endpoints()[0]
	if _, err := cli.Status(ctx, ep); err != nil {
		t.Fatalf("status on a learner: %v", err)
	}
	waitFor(ctx, t, func() bool {
		get, err := cli.Get(ctx, "before", clientv3.WithSerializable())
		if err != nil {
			t.Fatalf("serializable get on a learner: %v", err)
		}
		return len(get.Kvs) == 1
	})
	snap, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatalf("snapshot on a learner: %v", err)
	}
	if n, err := io.Copy(io.Discard, snap); err != nil || n == 0 {
		t.Fatalf("snapshot on a learner: %d bytes, %v", n, err)
	}
	refused := map[string]func() error{
		"put":              func() error { _, err := cli.Put(ctx, "k", "v"); return err },
		"linearizable get": func() error { _, err := cli.Get(ctx, "before"); return err },
		"txn":              func() error { _, err := cli.Txn(ctx).Then(clientv3.OpGet("k")).Commit(); return err },
		"member list":      func() error { _, err := cli.MemberList(ctx); return err },
		"lease grant":      func() error { _, err := cli.Grant(ctx, 10); return err },
		"alarm list":       func() error { _, err := cli.AlarmList(ctx); return err },
		"hashkv":           func() error { _, err := cli.HashKV(ctx, ep, 0); return err },
		"keep-alive": func() error {
			// The raw stream: clientv3's KeepAliveOnce sends first, and
			// gets io.EOF when the refusal has closed the stream already.
			stream, err := etcdserverpb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(ctx)
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		},
		"watch": func() error {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			resp := <-cli.Watch(wctx, "k")
			return resp.Err()
		},
	}
	for name, call := range refused {
		if err := call(); err == nil || !strings.Contains(err.Error(), "rpc not supported for learner") {
			t.Errorf("%s on a learner: %v, want %v", name, err, rpctypes.ErrGRPCNotSupportedForLearner)
		}
	}
	// Other members' corruption checks still get its hash.
	if !strings.Contains(ep, "://") {
		ep = "http://" + ep
	}
	if _, err := hashKVOf(ctx, ep, 0); err != nil {
		t.Errorf("a member's corruption check asking a learner for its hash: %v", err)
	}
}
