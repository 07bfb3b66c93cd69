package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// snapCount is the --snapshot-count of the membership tests: the log keeps
// this many entries and is truncated every 2x, so a few hundred writes push
// a lagging member past the log.
const snapCount = 100

// startSmallLogCluster starts a cluster of n members whose log keeps only
// snapCount entries.
func startSmallLogCluster(t *testing.T, n int) *testmember.Cluster {
	t.Helper()
	c := testmember.NewCluster(t, plinthBin, n, append(memberFlags(), "--snapshot-count", fmt.Sprint(snapCount))...)
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return c
}

// writeMany puts n keys prefix/00000.. with values v<i>, and a counter key
// prefix/ctr n times, through cli, 8 at a time.
func writeMany(t *testing.T, cli *clientv3.Client, prefix string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if _, err := cli.Put(t.Context(), fmt.Sprintf("%s/%05d", prefix, i), fmt.Sprintf("v%d", i)); err != nil {
					errs <- err
					return
				}
				if _, err := cli.Put(t.Context(), prefix+"/ctr", fmt.Sprint(i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// wantSnapshotInstalled checks that m's current log says it installed a
// snapshot.
func wantSnapshotInstalled(t *testing.T, m *testmember.Member) {
	t.Helper()
	log, err := m.Log()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log, "installed a snapshot") {
		t.Errorf("%s caught up without installing a snapshot (its log %s does not say \"installed a snapshot\"); the test wrote more than the log keeps", m.Name(), m.LogPath())
	}
}

// TestRestartCatchesUpBySnapshot stops a follower, writes more than the log
// keeps (--snapshot-count=100), and restarts it: it must catch up from a
// snapshot, then hold the same keys, values and versions as the leader, and
// later writes through it must continue the keys' versions.
func TestRestartCatchesUpBySnapshot(t *testing.T) {
	ctx := t.Context()
	c := startSmallLogCluster(t, 3)
	leader, _ := findLeader(t, c)
	f := others(c, leader)[0]
	lcli := client(t, leader.Endpoint())
	if _, err := lcli.Put(ctx, "snap/ctr", "first"); err != nil {
		t.Fatal(err)
	}
	if err := f.Kill(); err != nil {
		t.Fatal(err)
	}
	n := 300 // 600 entries: the log was truncated past where f stopped
	if *breakFlag == "nosnapshot" {
		n = 20
	}
	writeMany(t, lcli, "snap", n)
	if *breakFlag != "nowait" {
		if err := restart(ctx, c, f); err != nil {
			t.Fatal(err)
		}
	} else if err := f.Launch(); err != nil {
		t.Fatal(err)
	}
	wantSnapshotInstalled(t, f)

	// Once f applied the leader's revision, its serializable range is the
	// leader's.
	want, err := lcli.Get(ctx, "snap/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	fcli := client(t, f.Endpoint())
	if *breakFlag != "nowait" {
		if err := waitRevision(ctx, fcli, want.Header.Revision); err != nil {
			t.Fatal(err)
		}
	}
	got, err := fcli.Get(ctx, "snap/", clientv3.WithPrefix(), clientv3.WithSerializable(), clientv3.WithRev(want.Header.Revision))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != len(want.Kvs) || len(got.Kvs) != n+1 {
		t.Fatalf("serializable range on %s after the snapshot: %d keys; the leader has %d (want %d)", f.Name(), len(got.Kvs), len(want.Kvs), n+1)
	}
	for i, kv := range got.Kvs {
		w := want.Kvs[i]
		if string(kv.Key) != string(w.Key) || string(kv.Value) != string(w.Value) || kv.Version != w.Version ||
			kv.CreateRevision != w.CreateRevision || kv.ModRevision != w.ModRevision {
			t.Errorf("on %s %s=%q version %d create %d mod %d; on the leader %s=%q version %d create %d mod %d",
				f.Name(), kv.Key, kv.Value, kv.Version, kv.CreateRevision, kv.ModRevision, w.Key, w.Value, w.Version, w.CreateRevision, w.ModRevision)
		}
	}

	// A write through f continues the counter's versions and keeps its
	// create revision.
	ctr := want.Kvs[slices.IndexFunc(want.Kvs, func(kv *mvccpb.KeyValue) bool { return string(kv.Key) == "snap/ctr" })]
	put, err := fcli.Put(ctx, "snap/ctr", "after", clientv3.WithPrevKV())
	if err != nil {
		t.Fatal(err)
	}
	if put.PrevKv == nil || put.PrevKv.Version != ctr.Version {
		t.Errorf("put through %s: previous version %v, want %d", f.Name(), put.PrevKv, ctr.Version)
	}
	resp, err := lcli.Get(ctx, "snap/ctr")
	if err != nil {
		t.Fatal(err)
	}
	if kv := resp.Kvs[0]; kv.Version != ctr.Version+1 || kv.CreateRevision != ctr.CreateRevision || kv.ModRevision != put.Header.Revision {
		t.Errorf("snap/ctr after a put through %s: version %d create %d mod %d; want version %d create %d mod %d",
			f.Name(), kv.Version, kv.CreateRevision, kv.ModRevision, ctr.Version+1, ctr.CreateRevision, put.Header.Revision)
	}
	if ctr.Version != int64(n)+1 {
		t.Errorf("snap/ctr was put %d times, its version is %d", n+1, ctr.Version)
	}
}

// loadWriters runs writers through clis until stop, each put of a key of
// its own, and collects the acknowledged ones.
type writers struct {
	mu    sync.Mutex
	acked []ackedWrite
	stop  context.CancelFunc
	wg    sync.WaitGroup
}

func startWriters(t *testing.T, prefix string, clis ...*clientv3.Client) *writers {
	ctx, stop := context.WithCancel(t.Context())
	ws := &writers{stop: stop}
	for w, cli := range clis {
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				key, value := fmt.Sprintf("%s/w%d/%05d", prefix, w, i), fmt.Sprintf("v%d.%d", w, i)
				octx, cancel := context.WithTimeout(ctx, 2*time.Second)
				resp, err := cli.Put(octx, key, value)
				cancel()
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				ws.mu.Lock()
				ws.acked = append(ws.acked, ackedWrite{key: key, value: value, rev: resp.Header.Revision})
				ws.mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	t.Cleanup(func() { ws.finish() })
	return ws
}

func (ws *writers) count() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return len(ws.acked)
}

// finish stops the writers and returns what they were told succeeded.
func (ws *writers) finish() []ackedWrite {
	ws.stop()
	ws.wg.Wait()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return slices.Clone(ws.acked)
}

// memberAdd adds a member on peerURL through cli and returns the
// --initial-cluster the new member named name starts with.
func memberAdd(t *testing.T, cli *clientv3.Client, name, peerURL string, learner bool) (uint64, string) {
	t.Helper()
	add := cli.MemberAdd
	if learner {
		add = cli.MemberAddAsLearner
	}
	var resp *clientv3.MemberAddResponse
	err := retryUnhealthy(func() (err error) {
		resp, err = add(t.Context(), []string{peerURL})
		return err
	})
	if err != nil {
		t.Fatalf("member add %s (learner %v): %v", name, learner, err)
	}
	var initial []string
	for _, m := range resp.Members {
		n := m.Name
		if m.ID == resp.Member.ID {
			n = name
		}
		for _, u := range m.PeerURLs {
			initial = append(initial, n+"="+u)
		}
	}
	return resp.Member.ID, strings.Join(initial, ",")
}

// addExisting prepares member name with member add (as a learner or a
// voter) and starts it with --initial-cluster-state existing.
func addExisting(t *testing.T, c *testmember.Cluster, cli *clientv3.Client, name string, learner bool) (*testmember.Member, uint64) {
	t.Helper()
	var id uint64
	m := c.NewMember(name, func(peerURL, _ string) []string {
		var initial string
		id, initial = memberAdd(t, cli, name, peerURL, learner)
		return []string{"--initial-cluster", initial, "--initial-cluster-state", "existing", "--initial-cluster-token", c.Token()}
	})
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m, id
}

// removeMember removes m from the cluster through another member, and
// checks that its process exits non-zero saying it was removed, and that its
// data dir then refuses to start.
func removeMember(t *testing.T, c *testmember.Cluster, m *testmember.Member) {
	t.Helper()
	st, err := m.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	via := others(c, m)[0]
	if err := memberRemove(t, client(t, via.Endpoint()), st.ID); err != nil {
		t.Fatalf("member remove %s through %s: %v", m.Name(), via.Name(), err)
	}
	c.Forget(m)
	wantRemovedExit(t, m, st.ID)
}

// wantRemovedExit checks that the removed member m exits non-zero within
// 15s saying it was removed, and that its data dir then refuses to start.
func wantRemovedExit(t *testing.T, m *testmember.Member, id uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	exit := m.WaitExit(ctx)
	if errors.Is(exit, context.DeadlineExceeded) {
		t.Fatalf("removed member %s still runs 15s after its removal", m.Name())
	}
	log, _ := m.Log()
	if exit == nil || !strings.Contains(log, "removed from the cluster") {
		t.Errorf("removed member %s exited with %v; want a non-zero exit and its log to say it was removed (log %s)", m.Name(), exit, m.LogPath())
	}
	// Its data dir is of a removed member: it must not serve again.
	if err := m.Launch(); err != nil {
		t.Fatal(err)
	}
	exit = m.WaitExit(ctx)
	if exit == nil || errors.Is(exit, context.DeadlineExceeded) {
		_ = m.Kill()
		t.Errorf("removed member %s restarted on its data dir: exit %v; want it to refuse", m.Name(), exit)
	}
	t.Logf("removed %s (id %x): it exited (%v), and refuses to start again", m.Name(), id, exit)
}

// memberRemove removes member id through cli, retrying ErrUnhealthy.
func memberRemove(t *testing.T, cli *clientv3.Client, id uint64) error {
	return retryUnhealthy(func() error {
		_, err := cli.MemberRemove(t.Context(), id)
		return err
	})
}

// retryUnhealthy runs change, a membership change, again while it is refused
// with ErrUnhealthy, for 15s at most. Until its leader has heard from enough
// voters lately (etcd: connected for its health interval, 5s), a cluster
// refuses a change that could cost its quorum that way.
func retryUnhealthy(change func() error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := change()
		if err == nil || !errors.Is(rpctypes.Error(err), rpctypes.ErrUnhealthy) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkMembers checks that every member of c lists exactly c's members, by
// name, as voters.
func checkMembers(t *testing.T, c *testmember.Cluster) {
	t.Helper()
	var want []string
	for _, m := range c.Members {
		want = append(want, m.Name())
	}
	slices.Sort(want)
	for _, m := range c.Members {
		resp, err := client(t, m.Endpoint()).MemberList(t.Context())
		if err != nil {
			t.Fatalf("member list of %s: %v", m.Name(), err)
		}
		var got []string
		for _, mm := range resp.Members {
			s := mm.Name
			if mm.IsLearner {
				s += "(learner)"
			}
			got = append(got, s)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("member list of %s: %v, want voters %v", m.Name(), got, want)
		}
	}
}

// TestMembershipUnderLoad changes a cluster's membership while clients
// write: it adds a voter (member add, then a start with
// --initial-cluster-state existing), adds a learner and promotes it, and
// removes one of the first members. The removed member exits saying so;
// every acknowledged write is readable on every remaining member at the end.
func TestMembershipUnderLoad(t *testing.T) {
	ctx := t.Context()
	c := startSmallLogCluster(t, 3)
	first := c.Endpoints()
	all := client(t, first...)
	ws := startWriters(t, "member", all, client(t, first[0]), client(t, first[2]))
	step := func(what string) {
		t.Logf("%s; %d writes acknowledged so far", what, ws.count())
		time.Sleep(300 * time.Millisecond)
	}
	step("writers started")

	m3, _ := addExisting(t, c, all, "m3", false)
	step("added voter m3")

	m4, id4 := addExisting(t, c, all, "m4", true)
	deadline := time.Now().Add(20 * time.Second)
	for *breakFlag != "nopromote" {
		_, err := all.MemberPromote(ctx, id4)
		if err == nil {
			break
		}
		if !errors.Is(rpctypes.Error(err), rpctypes.ErrMemberLearnerNotReady) || time.Now().After(deadline) {
			t.Fatalf("member promote m4: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	step("added learner m4 and promoted it")

	victim := follower(t, c, c.Members[:3])
	removeMember(t, c, victim)
	before := ws.count()
	step("removed " + victim.Name())
	time.Sleep(500 * time.Millisecond)
	acked := ws.finish()
	if len(acked)-before < 50 {
		t.Errorf("%d writes acknowledged after %s's removal, want at least 50", len(acked)-before, victim.Name())
	}
	t.Logf("%d writes acknowledged; checking them on %d members", len(acked), len(c.Members))
	report(t, "acknowledged writes", checkAcked(ctx, c, acked))
	checkMembers(t, c)
	_, _ = m3, m4
}

// TestJoinUnderLoad starts a fourth member with --join while clients write,
// after more writes than the log keeps: it catches up from a snapshot,
// promotes itself to voter and publishes its name; then another member is
// removed, and the cluster keeps serving.
func TestJoinUnderLoad(t *testing.T) {
	ctx := t.Context()
	c := startSmallLogCluster(t, 3)
	all := client(t, c.Endpoints()...)
	if *breakFlag != "nosnapshot" {
		writeMany(t, all, "join/pre", 150)
	}
	ws := startWriters(t, "join", all, client(t, c.Members[0].Endpoint()), client(t, c.Members[2].Endpoint()))

	joined := time.Now()
	j := c.NewMember("m3", func(_, _ string) []string {
		return []string{"--join", "http://" + c.Members[0].Endpoint()}
	})
	if err := j.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// It becomes a voter with its name.
	for {
		resp, err := all.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(resp.Members, func(m *pb.Member) bool { return slices.Contains(m.PeerURLs, j.PeerURL()) })
		if i >= 0 && !resp.Members[i].IsLearner && resp.Members[i].Name == "m3" {
			t.Logf("m3 joined and is a voter %v after its start", time.Since(joined).Round(time.Millisecond))
			break
		}
		if time.Since(joined) > 30*time.Second {
			t.Fatalf("m3 is not a named voter 30s after it started with --join: %v", resp.Members)
		}
		time.Sleep(100 * time.Millisecond)
	}
	wantSnapshotInstalled(t, j)

	victim := follower(t, c, c.Members[:3])
	removeMember(t, c, victim)
	before := ws.count()
	time.Sleep(time.Second)
	acked := ws.finish()
	if len(acked)-before < 50 {
		t.Errorf("%d writes acknowledged in the second after %s's removal, want at least 50", len(acked)-before, victim.Name())
	}
	t.Logf("%d writes acknowledged; checking them on %d members", len(acked), len(c.Members))
	report(t, "acknowledged writes", checkAcked(ctx, c, acked))
	checkMembers(t, c)
}

// follower returns the first of among that does not lead c now.
func follower(t *testing.T, c *testmember.Cluster, among []*testmember.Member) *testmember.Member {
	t.Helper()
	leader, _ := findLeader(t, c)
	for _, m := range among {
		if m != leader {
			return m
		}
	}
	t.Fatal("no follower")
	return nil
}

// TestRemoveCutOffMember removes a member while iptables cuts it off from its
// peers. When the network heals it must stop, saying it was removed: either
// it gets the entry that removed it (TCP may still deliver what the leader
// sent before it applied the removal) or, when it does not, its peers refuse
// it over the connections it opened before the cut. (The second path alone
// is tested in internal/server, where the transport drops messages.)
func TestRemoveCutOffMember(t *testing.T) {
	ctx := t.Context()
	c, nw := startNetCluster(t, 3)
	victim := follower(t, c, c.Members)
	st, err := victim.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	via := others(c, victim)[0]
	vcli := client(t, via.Endpoint())
	// Its streams to every peer are open: a write reaches all three.
	if _, err := vcli.Put(ctx, "before/cut", "v"); err != nil {
		t.Fatal(err)
	}
	cutOff(t, c, nw, victim)
	if err := memberRemove(t, vcli, st.ID); err != nil {
		t.Fatalf("member remove of the cut-off %s (%x) through %s: %v", victim.Name(), st.ID, via.Name(), err)
	}
	c.Forget(victim)
	writeMany(t, vcli, "after/removal", 20)
	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	wantRemovedExit(t, victim, st.ID)
	checkMembers(t, c)
}

// TestMemberAddThenStartFromEtcdEnvironment follows etcd's runtime
// reconfiguration guide: member add prints ETCD_NAME, ETCD_INITIAL_CLUSTER
// and ETCD_INITIAL_CLUSTER_STATE, the operator exports them and starts the
// new member with its URLs alone on the command line. It must join the
// cluster under that name, not start a cluster of its own.
func TestMemberAddThenStartFromEtcdEnvironment(t *testing.T) {
	ctx := t.Context()
	c := startCluster(t, 3)
	cli := client(t, c.Endpoints()...)
	clientURL, peerURL := "http://"+testmember.FreeAddr(t), "http://"+testmember.FreeAddr(t)
	id, initial := memberAdd(t, cli, "infra3", peerURL, false)

	dir := t.TempDir()
	cmd := exec.Command(plinthBin,
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL)
	cmd.Env = append(os.Environ(),
		"ETCD_NAME=infra3",
		"ETCD_INITIAL_CLUSTER="+initial,
		"ETCD_INITIAL_CLUSTER_STATE=existing",
	)
	// The cluster's timings, from the environment too.
	flags := memberFlags()
	for i := 0; i+1 < len(flags); i += 2 {
		cmd.Env = append(cmd.Env, "ETCD_"+strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(flags[i], "--"), "-", "_"))+"="+flags[i+1])
	}
	logPath := filepath.Join(dir, "plinth.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("the new member exited (%v):\n%s", err, log)
		default:
		}
		resp, err := cli.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(resp.Members, func(m *pb.Member) bool { return m.ID == id })
		if i >= 0 && resp.Members[i].Name == "infra3" && len(resp.Members[i].ClientURLs) == 1 && resp.Members[i].ClientURLs[0] == clientURL {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			t.Fatalf("member %x is not started as infra3 30s after its start: %v\nits log:\n%s", id, resp.Members, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ncli := client(t, strings.TrimPrefix(clientURL, "http://"))
	if _, err := cli.Put(ctx, "through/the/others", "v"); err != nil {
		t.Fatal(err)
	}
	get, err := ncli.Get(ctx, "through/the/others")
	if err != nil || len(get.Kvs) != 1 {
		t.Fatalf("the new member reads %+v, %v", get, err)
	}
}

// TestRemoveLeader removes the leader through a follower, as etcd allows:
// the removal is answered (etcd answers it before the removed leader stops),
// the old leader exits saying it was removed, and the two others elect a
// leader and keep taking writes.
func TestRemoveLeader(t *testing.T) {
	ctx := t.Context()
	c := startCluster(t, 3)
	leader, term := findLeader(t, c)
	st, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	via := others(c, leader)[0]
	vcli := client(t, via.Endpoint())
	rerr := memberRemove(t, vcli, st.ID)
	if rerr != nil {
		t.Fatalf("member remove of the leader %s (%x) through %s: %v; etcd removes a leader (it steps down and stops)", leader.Name(), st.ID, via.Name(), rerr)
	}
	c.Forget(leader)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	exit := leader.WaitExit(wctx)
	log, _ := leader.Log()
	if exit == nil || errors.Is(exit, context.DeadlineExceeded) || !strings.Contains(log, "removed from the cluster") {
		t.Errorf("removed leader %s: exit %v; want a non-zero exit and its log to say it was removed", leader.Name(), exit)
	}
	newLeader, newTerm := findLeader(t, c)
	t.Logf("removed leader %s (term %d); %s leads in term %d", leader.Name(), term, newLeader.Name(), newTerm)
	list, err := vcli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Members) != 2 || slices.ContainsFunc(list.Members, func(m *pb.Member) bool { return m.ID == st.ID }) {
		t.Errorf("member list after removing %s (%x): %v", leader.Name(), st.ID, list.Members)
	}
	if _, err := vcli.Put(ctx, "after/removal", "v"); err != nil {
		t.Errorf("put after the leader's removal: %v", err)
	}
}
