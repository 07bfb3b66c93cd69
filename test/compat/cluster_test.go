package compat

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// clusterSize is the number of members of a target cluster.
const clusterSize = 3

// Timing of a target cluster's members, in milliseconds. Short, so that a
// fresh cluster elects its leader soon; long enough for three members, the
// embedded etcd and the test sharing two cores without spurious elections
// (plinth runs Raft with PreVote and CheckQuorum).
const (
	clusterHeartbeatMs = 25
	clusterElectionMs  = 250
)

// member is one member of a target cluster.
type member struct {
	name         string
	client, peer url.URL
	start        func(t testing.TB) // starts it; does not wait for a quorum
	stop         func(t testing.TB) // stops it; returns once it is down
	proc         *process           // the child process; nil for an embedded etcd
	id           uint64             // learnt once the cluster serves
}

func (m *member) exited() <-chan struct{} {
	if m.proc == nil {
		return nil
	}
	return m.proc.exited
}

func (m *member) logPath() string {
	if m.proc == nil {
		return ""
	}
	return m.proc.logPath
}

// startCluster starts a fresh cluster of clusterSize members (plinth
// processes of bin, or with bin "" embedded etcds) bootstrapped together with
// --initial-cluster and a token of its own, waits until every member answers
// a linearizable Get and all agree on a leader, and returns the target that
// the comparison talks to: a follower. Its writes are forwarded to the leader
// and its linearizable reads take a ReadIndex from the leader.
//
// The returned server's ids are set before the first request: every header
// must carry the cluster's id (the same on every member) and the follower's
// own member id, as etcd fills them: the member that answers, not the leader.
//
// Its restart stops the whole cluster and starts it again on its data dirs
// and ports (every member recovers from its own disk and a new leader is
// elected; see restartCluster). All members are stopped by pid, and their
// data removed, when t ends.
func startCluster(t testing.TB, name, bin string) *server {
	t.Helper()
	token := fmt.Sprintf("compat-%016x", rand.Uint64())
	members := make([]*member, clusterSize)
	var initial []string
	for i := range members {
		m := &member{name: fmt.Sprintf("%s-%d", name, i), client: freeURL(t), peer: freeURL(t)}
		members[i] = m
		initial = append(initial, m.name+"="+m.peer.String())
	}
	for _, m := range members {
		dir := t.TempDir()
		if bin == "" {
			embeddedMember(t, m, dir, strings.Join(initial, ","), token)
			continue
		}
		m.proc = newProcess(t, m.name, bin, dir,
			"--name", m.name,
			"--data-dir", filepath.Join(dir, "data"),
			"--listen-client-urls", m.client.String(),
			"--advertise-client-urls", m.client.String(),
			"--listen-peer-urls", m.peer.String(),
			"--initial-advertise-peer-urls", m.peer.String(),
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--heartbeat-interval", fmt.Sprint(clusterHeartbeatMs),
			"--election-timeout", fmt.Sprint(clusterElectionMs),
		)
		m.start = m.proc.start
		m.stop = m.proc.stop
	}
	for _, m := range members {
		m.start(t)
	}
	leader, clusterID := waitCluster(t, members)

	var follower *member
	for _, m := range members {
		if m.id != leader {
			follower = m
			break
		}
	}
	s := dial(t, name+" (follower "+follower.name+" of 3)", follower.client.Host)
	s.clusterID, s.memberID = clusterID, follower.id
	s.restart = func(t testing.TB) { restartCluster(t, members, follower, clusterID) }
	s.checkRole = func(t testing.TB) { checkFollower(t, members, follower) }
	return s
}

// embeddedMember makes m an etcd v3.7.3 member embedded in the test process,
// for the self-test's cluster (etcd against a 3-member etcd).
func embeddedMember(t testing.TB, m *member, dir, initial, token string) {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = filepath.Join(dir, "data")
	cfg.ListenClientUrls = []url.URL{m.client}
	cfg.AdvertiseClientUrls = []url.URL{m.client}
	cfg.ListenPeerUrls = []url.URL{m.peer}
	cfg.AdvertisePeerUrls = []url.URL{m.peer}
	cfg.InitialCluster = initial
	cfg.InitialClusterToken = token
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(embeddedLogger(t, filepath.Join(dir, "etcd.log")))
	cfg.UnsafeNoFsync = true
	cfg.TickMs = clusterHeartbeatMs
	cfg.ElectionMs = clusterElectionMs
	var e *embed.Etcd
	m.start = func(t testing.TB) {
		var err error
		if e, err = embed.StartEtcd(cfg); err != nil {
			t.Fatalf("compat: starting embedded %s: %v", m.name, err)
		}
	}
	m.stop = func(testing.TB) {
		if e != nil {
			e.Close()
			e = nil
		}
	}
	t.Cleanup(func() { m.stop(t) }) // after t.TempDir: runs before the directory is removed
}

// waitCluster waits until every member answers a linearizable Get and all
// report, in Maintenance.Status, the same cluster id and the same leader,
// one of them. It sets each member's id (checked against the member list)
// and returns the leader's id and the cluster's.
func waitCluster(t testing.TB, members []*member) (leader, clusterID uint64) {
	t.Helper()
	for _, m := range members {
		waitReady(t, &server{name: m.name, addr: m.client.Host}, m.exited(), m.logPath())
	}
	deadline := time.Now().Add(readyTimeout)
	var last string
	for time.Now().Before(deadline) {
		var leaders, clusters []uint64
		for _, m := range members {
			st, err := memberStatus(m)
			if err != nil {
				last = fmt.Sprintf("%s: %v", m.name, err)
				break
			}
			m.id = st.Header.MemberId
			leaders = append(leaders, st.Leader)
			clusters = append(clusters, st.Header.ClusterId)
		}
		if len(leaders) == len(members) {
			leader, clusterID = leaders[0], clusters[0]
			agree := slices.IndexFunc(members, func(m *member) bool { return m.id == leader }) >= 0 && clusterID != 0
			for i := range members {
				agree = agree && leaders[i] == leader && clusters[i] == clusterID
			}
			if agree {
				checkMemberIDs(t, members, leader)
				return leader, clusterID
			}
			last = fmt.Sprintf("members report leaders %x and cluster ids %x", leaders, clusters)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("compat: cluster did not settle on a leader within %v: %s", readyTimeout, last)
	return 0, 0
}

// checkMemberIDs requires each member's own id to be the one the leader's
// member list gives its peer URL, so that the member id the headers are
// held to does not rest on the follower's word alone.
func checkMemberIDs(t testing.TB, members []*member, leader uint64) {
	t.Helper()
	i := slices.IndexFunc(members, func(m *member) bool { return m.id == leader })
	cli := client(t, members[i])
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatalf("compat: member list of %s: %v", members[i].name, err)
	}
	if len(ml.Members) != len(members) {
		t.Fatalf("compat: member list of %s has %d members, want %d", members[i].name, len(ml.Members), len(members))
	}
	for _, m := range members {
		j := slices.IndexFunc(ml.Members, func(x *pb.Member) bool { return slices.Contains(x.PeerURLs, m.peer.String()) })
		if j < 0 || ml.Members[j].ID != m.id {
			t.Fatalf("compat: %s says its id is %x; the member list has %v", m.name, m.id, ml.Members)
		}
	}
}

// restartCluster stops every member, then starts them all again on their
// data dirs: the history must come back from each member's own disk. If the
// member under test is elected, leadership is moved away from it, so that
// the ops after a restart still go through a follower. The ids must not
// change.
func restartCluster(t testing.TB, members []*member, under *member, clusterID uint64) {
	t.Helper()
	for _, m := range members {
		m.stop(t)
	}
	for _, m := range members {
		m.start(t)
	}
	ids := map[*member]uint64{}
	for _, m := range members {
		ids[m] = m.id
	}
	leader, cid := waitCluster(t, members)
	for _, m := range members {
		if m.id != ids[m] {
			t.Fatalf("compat: %s's member id changed from %x to %x in a restart", m.name, ids[m], m.id)
		}
	}
	if cid != clusterID {
		t.Fatalf("compat: cluster id changed from %x to %x in a restart", clusterID, cid)
	}
	if leader == under.id {
		moveLeaderAway(t, members, under)
	}
}

// moveLeaderAway asks from, the leader, to hand leadership to another member
// and waits until all members agree on the new one.
func moveLeaderAway(t testing.TB, members []*member, from *member) {
	t.Helper()
	to := members[0]
	if to == from {
		to = members[1]
	}
	cli := client(t, from)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.MoveLeader(ctx, to.id); err != nil {
		t.Fatalf("compat: moving leadership from %s to %s: %v", from.name, to.name, err)
	}
	if leader, _ := waitCluster(t, members); leader == from.id {
		t.Fatalf("compat: %s is still the leader after MoveLeader", from.name)
	}
}

// checkFollower reports whether the member under test is still a follower:
// if it has become the leader, the ops since went through no forwarding. An
// election is not a failure (a loaded machine can delay heartbeats); it is
// logged so that a run that lost its point shows it.
func checkFollower(t testing.TB, members []*member, under *member) {
	t.Helper()
	st, err := memberStatus(under)
	if err != nil {
		t.Errorf("compat: status of %s: %v", under.name, err)
		return
	}
	if st.Leader == under.id {
		t.Logf("compat: NOTE: %s, the member under test, has become the leader: later ops were not forwarded", under.name)
	}
}

func client(t testing.TB, m *member) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{m.client.Host},
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(fastReconnect)},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("compat: etcd client for %s: %v", m.name, err)
	}
	return cli
}

func memberStatus(m *member) (*clientv3.StatusResponse, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.client.Host}, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return cli.Status(ctx, m.client.Host)
}
