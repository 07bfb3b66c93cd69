package cluster

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
	"github.com/plinthdb/plinth/internal/testnet"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The nemesis of TestLinearizableUnderFaults makes one fault at a time, and
// undoes it before the next: every member runs again, the network is whole,
// and the cluster agrees on a leader. Its menu:
//
//	kill, kill-leader         kill -9 a member (the leader), restart it
//	pause, pause-leader       SIGSTOP a member (the leader) for longer than
//	                          the election timeout, then SIGCONT
//	quorum-pause, quorum-kill pause (kill -9) a majority of the members at
//	                          once for longer than the election timeout:
//	                          loss of quorum, then they come back
//	isolate-leader,           cut the leader (a follower) off from its
//	isolate-follower          peers, then heal
//	isolate-all               cut every member off from every other: no
//	                          side has a quorum; then heal
//	replace, replace-leader   remove a follower (the leader) from the
//	                          cluster, wipe it, and add a fresh member with
//	                          an empty data dir on its URLs (member add, then
//	                          --initial-cluster-state existing)
//
// The isolate faults need the members in network namespaces (testnet): the
// test runs them so when it can, and without those faults otherwise. While
// no quorum exists anywhere (quorum-pause, quorum-kill, isolate-all), no op
// issued after the quorum was lost may be answered before it is restored,
// but for linearizable gets within the leader's read lease: checkNoQuorum
// checks the history for that, besides porcupine.
type nemesis struct {
	t   *testing.T
	c   *testmember.Cluster
	nw  *testnet.Network // nil on loopback: no isolate faults
	h   *linHistory
	rng *rand.Rand
	// fresh counts the members added by replace faults, to name them.
	fresh int
	// noQuorum lists when no side of the cluster had a quorum, in the
	// history's clock.
	noQuorum []noQuorumSpan
}

// noQuorumSpan is a time, in the history's clock, when no quorum existed.
type noQuorumSpan struct {
	what     string
	from, to int64
}

// A fault is one item of the nemesis's menu: run makes it, undoes it, and
// says what it did.
type fault struct {
	name    string
	members int  // the fewest members it makes sense on
	network bool // it partitions the network
	run     func(nm *nemesis, leader *testmember.Member) (string, error)
}

var faultMenu = []fault{
	{"kill", 1, false, func(nm *nemesis, _ *testmember.Member) (string, error) { return nm.kill(nm.any()) }},
	{"kill-leader", 1, false, func(nm *nemesis, l *testmember.Member) (string, error) { return nm.kill(l) }},
	{"pause", 1, false, func(nm *nemesis, _ *testmember.Member) (string, error) { return nm.pause(nm.any()) }},
	{"pause-leader", 1, false, func(nm *nemesis, l *testmember.Member) (string, error) { return nm.pause(l) }},
	{"quorum-pause", 3, false, (*nemesis).quorumPause},
	{"quorum-kill", 3, false, (*nemesis).quorumKill},
	{"isolate-leader", 3, true, func(nm *nemesis, l *testmember.Member) (string, error) {
		return nm.isolate("leader", false, l)
	}},
	{"isolate-follower", 3, true, func(nm *nemesis, l *testmember.Member) (string, error) {
		return nm.isolate("follower", false, nm.follower(l))
	}},
	{"isolate-all", 3, true, func(nm *nemesis, _ *testmember.Member) (string, error) {
		return nm.isolate("every member", true, nm.c.Members...)
	}},
	{"replace", 3, false, func(nm *nemesis, l *testmember.Member) (string, error) { return nm.replace(nm.follower(l)) }},
	{"replace-leader", 3, false, func(nm *nemesis, l *testmember.Member) (string, error) { return nm.replace(l) }},
}

var faultsFlag = flag.String("cluster.faults", "", "comma-separated faults of TestLinearizableUnderFaults's nemesis (default: all that fit; see nemesis)")

// menu lists the faults that fit the cluster and the network, of those
// -cluster.faults names if it does.
func (nm *nemesis) menu() []fault {
	var want []string
	if *faultsFlag != "" {
		want = strings.Split(*faultsFlag, ",")
		for _, w := range want {
			if !slices.ContainsFunc(faultMenu, func(f fault) bool { return f.name == w }) {
				nm.t.Fatalf("-cluster.faults: no fault %q", w)
			}
		}
	}
	var out []fault
	for _, f := range faultMenu {
		if len(nm.c.Members) >= f.members && (nm.nw != nil || !f.network) && (want == nil || slices.Contains(want, f.name)) {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		nm.t.Fatalf("no fault of -cluster.faults=%s fits (%d members, network namespaces %v)", *faultsFlag, len(nm.c.Members), nm.nw != nil)
	}
	return out
}

// run injects faults until d has passed and each fault of the menu ran at
// least once (the first ones are the menu in a random order), and returns
// how many.
func (nm *nemesis) run(d time.Duration) int {
	t := nm.t
	t.Helper()
	menu := nm.menu()
	var names []string
	for _, f := range menu {
		names = append(names, f.name)
	}
	t.Logf("nemesis: %s", strings.Join(names, ", "))
	tour := slices.Clone(menu)
	nm.rng.Shuffle(len(tour), func(i, j int) { tour[i], tour[j] = tour[j], tour[i] })
	deadline := time.Now().Add(d)
	n := 0
	for ; n < len(tour) || time.Now().Before(deadline); n++ {
		time.Sleep(300*time.Millisecond + time.Duration(nm.rng.Int64N(int64(700*time.Millisecond))))
		f := menu[nm.rng.IntN(len(menu))]
		if n < len(tour) {
			f = tour[n]
		}
		leader, term := findLeader(t, nm.c)
		start, at := time.Now(), time.Duration(nm.h.now())
		what, err := f.run(nm, leader)
		if err != nil {
			t.Fatalf("fault %d (%s: %s): %v", n+1, f.name, what, err)
		}
		took := time.Since(start)
		after, afterTerm := findLeader(t, nm.c)
		// at is on the history's clock, as the ops' times are.
		t.Logf("fault %d at %.3fs, %s: %s (leader was %s, term %d); %v; now %s leads in term %d (%v after the fault ended)",
			n+1, at.Seconds(), f.name, what, leader.Name(), term, took.Round(time.Millisecond), after.Name(), afterTerm, (time.Since(start) - took).Round(time.Millisecond))
	}
	return n
}

// any is a random member.
func (nm *nemesis) any() *testmember.Member {
	return nm.c.Members[nm.rng.IntN(len(nm.c.Members))]
}

// follower is a random member but leader.
func (nm *nemesis) follower(leader *testmember.Member) *testmember.Member {
	fs := others(nm.c, leader)
	return fs[nm.rng.IntN(len(fs))]
}

// long is how long a fault that should cost an election lasts: longer
// than the election timeout.
func (nm *nemesis) long() time.Duration {
	return electionTimeout*3/2 + time.Duration(nm.rng.Int64N(int64(electionTimeout*3/2)))
}

// majority picks a random majority of the members.
func (nm *nemesis) majority() []*testmember.Member {
	ms := slices.Clone(nm.c.Members)
	nm.rng.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
	return ms[:len(ms)/2+1]
}

func names(ms []*testmember.Member) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name())
	}
	return strings.Join(s, "+")
}

func (nm *nemesis) kill(m *testmember.Member) (string, error) {
	down := 200*time.Millisecond + time.Duration(nm.rng.Int64N(int64(1500*time.Millisecond)))
	what := fmt.Sprintf("kill -9 %s for %v", m.Name(), down.Round(time.Millisecond))
	if err := m.Kill(); err != nil {
		return what, err
	}
	time.Sleep(down)
	return what, restart(nm.t.Context(), nm.c, m)
}

func (nm *nemesis) pause(m *testmember.Member) (string, error) {
	p := nm.long()
	what := fmt.Sprintf("pause %s for %v", m.Name(), p.Round(time.Millisecond))
	if err := m.Pause(); err != nil {
		return what, err
	}
	time.Sleep(p)
	return what, m.Resume()
}

// quorumPause pauses a majority at once; the rest cannot make progress.
func (nm *nemesis) quorumPause(_ *testmember.Member) (string, error) {
	ms, p := nm.majority(), nm.long()
	what := fmt.Sprintf("pause %s at once for %v", names(ms), p.Round(time.Millisecond))
	for _, m := range ms {
		if err := m.Pause(); err != nil {
			return what, err
		}
	}
	from := nm.h.now()
	time.Sleep(p)
	nm.noQuorum = append(nm.noQuorum, noQuorumSpan{what, from, nm.h.now()})
	var errs []error
	for _, m := range ms {
		errs = append(errs, m.Resume())
	}
	return what, errors.Join(errs...)
}

// quorumKill kills -9 a majority at once, and restarts them together.
func (nm *nemesis) quorumKill(_ *testmember.Member) (string, error) {
	ms, p := nm.majority(), nm.long()
	what := fmt.Sprintf("kill -9 %s at once for %v", names(ms), p.Round(time.Millisecond))
	for _, m := range ms {
		if err := m.Kill(); err != nil {
			return what, err
		}
	}
	from := nm.h.now()
	time.Sleep(p)
	nm.noQuorum = append(nm.noQuorum, noQuorumSpan{what, from, nm.h.now()})
	return what, nm.c.Start(nm.t.Context())
}

// isolate cuts each of ms off from every other member for longer than the
// election timeout, then heals the network. noQuorum says that no side
// keeps a quorum.
func (nm *nemesis) isolate(role string, noQuorum bool, ms ...*testmember.Member) (string, error) {
	p := nm.long()
	what := fmt.Sprintf("isolate %s (%s) for %v", role, names(ms), p.Round(time.Millisecond))
	if *breakFlag == "nopartition" {
		what += " (NOT: -cluster.break=nopartition)"
	} else {
		for _, m := range ms {
			if err := nm.nw.Isolate(index(nm.c, m)); err != nil {
				return what, err
			}
		}
	}
	from := nm.h.now()
	time.Sleep(p)
	if noQuorum {
		nm.noQuorum = append(nm.noQuorum, noQuorumSpan{what, from, nm.h.now()})
	}
	return what, nm.nw.Heal()
}

// replace removes m from the cluster through another member, waits until it
// exits, and adds a fresh member with an empty data dir on m's URLs in its
// place: the clients pinned to m's endpoint then reach the fresh member.
func (nm *nemesis) replace(m *testmember.Member) (string, error) {
	ctx := nm.t.Context()
	nm.fresh++
	name := fmt.Sprintf("m%d", len(nm.c.Members)-1+nm.fresh)
	what := fmt.Sprintf("remove %s, wipe it, add it back as %s", m.Name(), name)
	st, err := m.Status(ctx)
	if err != nil {
		return what, err
	}
	via := nm.follower(m)
	cli, err := via.Client()
	if err != nil {
		return what, err
	}
	defer cli.Close()
	if err := memberRemove(nm.t, cli, st.ID); err != nil {
		return what, fmt.Errorf("member remove %s (%x) through %s: %w", m.Name(), st.ID, via.Name(), err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := m.WaitExit(wctx); errors.Is(err, context.DeadlineExceeded) {
		nm.t.Errorf("removed member %s (%x) still runs 15s after its removal; killing it", m.Name(), st.ID)
		if err := m.Kill(); err != nil {
			return what, err
		}
	}
	var addErr error
	fresh := nm.c.Replace(m, name, func(peerURL, _ string) []string {
		var initial string
		initial, addErr = addVoter(ctx, cli, name, peerURL)
		return []string{"--initial-cluster", initial, "--initial-cluster-state", "existing", "--initial-cluster-token", nm.c.Token()}
	})
	if addErr != nil {
		return what, fmt.Errorf("member add %s through %s: %w", name, via.Name(), addErr)
	}
	return what, fresh.Start(ctx)
}

// addVoter adds a voter on peerURL through cli and returns the
// --initial-cluster the new member named name starts with. It retries, for
// 15s, what a cluster that just lost a member or its leader may answer: no
// leader yet, not enough members started or active (etcd's strict
// reconfiguration check), a timeout. An add retried after a timeout may
// have been applied: its peer URL is then taken, by the member it added.
func addVoter(ctx context.Context, cli *clientv3.Client, name, peerURL string) (string, error) {
	deadline := time.Now().Add(15 * time.Second)
	for tried := false; ; tried = true {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cli.MemberAdd(actx, []string{peerURL})
		cancel()
		rerr := rpctypes.Error(err)
		if err == nil || (tried && errors.Is(rerr, rpctypes.ErrPeerURLExist)) {
			break
		}
		retry := errors.Is(rerr, rpctypes.ErrUnhealthy) || errors.Is(rerr, rpctypes.ErrMemberNotEnoughStarted) ||
			errors.Is(rerr, rpctypes.ErrNoLeader) || errors.Is(rerr, rpctypes.ErrTimeout) ||
			errors.Is(rerr, rpctypes.ErrLeaderChanged) || errors.Is(err, context.DeadlineExceeded)
		if !retry || time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(200 * time.Millisecond)
	}
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return "", err
	}
	var initial []string
	for _, m := range resp.Members {
		n := m.Name
		if slices.Contains(m.PeerURLs, peerURL) {
			n = name
		}
		for _, u := range m.PeerURLs {
			initial = append(initial, n+"="+u)
		}
	}
	return strings.Join(initial, ","), nil
}

// readLeaseBound is how long after a quorum last acknowledged it a leader
// may still answer linearizable reads from its read lease: no other leader
// can be elected sooner (see raftnode's lease.go; the lease itself ends a
// tenth earlier).
const readLeaseBound = electionTimeout - 2*heartbeat

// checkNoQuorum returns the ops of h that were answered (a put or cas
// acknowledged, a linearizable get served) although they were issued after
// every quorum was lost and answered before one was restored, and counts the
// writes issued meanwhile whose outcome is unknown (failed reads are not in
// the history). A get issued within readLeaseBound of the loss may be
// answered, from the leader's read lease.
func checkNoQuorum(h *linHistory, spans []noQuorumSpan) (errs []string, unknown int) {
	for _, s := range spans {
		for _, op := range h.ops {
			if op.Call < s.from || op.Call > s.to {
				continue
			}
			if op.Input.(kvInput).kind == kvGet && op.Call < s.from+int64(readLeaseBound) {
				continue
			}
			out := op.Output.(kvOutput)
			if out.unknown {
				unknown++
				continue
			}
			if op.Return <= s.to {
				errs = append(errs, fmt.Sprintf("answered without a quorum, while %s (%v to %v): client %d %s (%v to %v)",
					s.what, time.Duration(s.from), time.Duration(s.to), op.ClientId, kvModel.DescribeOperation(op.Input, op.Output),
					time.Duration(op.Call), time.Duration(op.Return)))
			}
		}
	}
	return errs, unknown
}
