package testmember

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Cluster is plinth members, m0..m(n-1), that bootstrap together as a new
// cluster: each on its own ports (or host) with its own data directory, all
// with the same --initial-cluster and --initial-cluster-token. Members added
// later (NewMember) join the list; members removed from the cluster leave it
// (Forget), or make room for a fresh member on their URLs (Replace).
type Cluster struct {
	t       testing.TB
	bin     string
	args    []string // the caller's flags of every member
	token   string
	seen    map[string]bool // addresses handed out, so that no two members share one
	hosts   []Host          // where members are placed, when given
	Members []*Member
}

// Host is where a member runs: the IP its client and peer URLs are on (ports
// 2379 and 2380), and the network namespace its process runs in (see
// internal/testnet).
type Host struct {
	IP    string
	Netns string
}

// NewCluster prepares a cluster of n members of the binary bin, on loopback
// ports. args are added to every member's flags at every start (after the
// harness's own, so e.g. "--election-timeout" can be given). Nothing runs
// until Start.
func NewCluster(t testing.TB, bin string, n int, args ...string) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("testmember: a cluster of %d members", n)
	}
	return newCluster(t, bin, n, nil, args)
}

// NewClusterOn prepares a cluster of one member on each of hosts, as
// NewCluster does.
func NewClusterOn(t testing.TB, bin string, hosts []Host, args ...string) *Cluster {
	t.Helper()
	if len(hosts) < 1 {
		t.Fatal("testmember: a cluster on no hosts")
	}
	return newCluster(t, bin, len(hosts), hosts, args)
}

func newCluster(t testing.TB, bin string, n int, hosts []Host, args []string) *Cluster {
	c := &Cluster{
		t:     t,
		bin:   bin,
		args:  args,
		token: fmt.Sprintf("plinth-test-%d", time.Now().UnixNano()),
		seen:  map[string]bool{},
		hosts: hosts,
	}
	clientURLs, peerURLs := make([]string, n), make([]string, n)
	initial := make([]string, n)
	for i := range n {
		clientURLs[i], peerURLs[i] = c.urls(i)
		initial[i] = fmt.Sprintf("m%d=%s", i, peerURLs[i])
	}
	for i := range n {
		m := newMember(t, bin, fmt.Sprintf("m%d", i), clientURLs[i], peerURLs[i], []string{
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", c.token,
		}, args)
		if hosts != nil {
			m.netns = hosts[i].Netns
		}
		c.Members = append(c.Members, m)
	}
	// Registered after the members' own cleanups, so it runs first: stop
	// them all at once, as a member stopping alone may wait for a quorum.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, m := range c.Members {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := m.Stop(); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	})
	return c
}

// urls picks the client and peer URLs of the i-th member: free loopback
// ports, or host i's IP.
func (c *Cluster) urls(i int) (clientURL, peerURL string) {
	if c.hosts != nil {
		ip := c.hosts[i].IP
		return "http://" + net.JoinHostPort(ip, "2379"), "http://" + net.JoinHostPort(ip, "2380")
	}
	// FreeAddr checks each address alone, so two picks could name the same
	// port: remember them all.
	addr := func() string {
		for {
			if a := FreeAddr(c.t); !c.seen[a] {
				c.seen[a] = true
				return "http://" + a
			}
		}
	}
	return addr(), addr()
}

// Token is the cluster's --initial-cluster-token.
func (c *Cluster) Token() string { return c.token }

// NewMember prepares a member named name that is not one of the cluster's
// bootstrap members, on free loopback ports, and adds it to Members. Its flags
// are its identity and URLs, then flags(its peer URL, its client URL) (e.g.
// --join, or --initial-cluster and --initial-cluster-state existing), then the
// cluster's flags. It is stopped when the test ends. Nothing runs until it is
// started; it can only be placed on loopback.
func (c *Cluster) NewMember(name string, flags func(peerURL, clientURL string) []string) *Member {
	c.t.Helper()
	if c.hosts != nil {
		c.t.Fatal("testmember: NewMember on a cluster placed on hosts")
	}
	clientURL, peerURL := c.urls(len(c.Members))
	m := newMember(c.t, c.bin, name, clientURL, peerURL, flags(peerURL, clientURL), c.args)
	c.Members = append(c.Members, m)
	return m
}

// Replace prepares a fresh member named name in place of old, a member
// removed from the cluster whose process no longer runs: on old's client and
// peer URLs and host (so that clients of old's endpoint reach it, and a
// network fault of old's host hits it), with an empty data directory, at
// old's position in Members. Its flags are its identity and URLs, then
// flags(its peer URL, its client URL) (e.g. --initial-cluster and
// --initial-cluster-state existing, after a member add), then the cluster's
// flags. Nothing runs until it is started; old's process, if any, is still
// stopped when the test ends.
func (c *Cluster) Replace(old *Member, name string, flags func(peerURL, clientURL string) []string) *Member {
	c.t.Helper()
	i := slices.Index(c.Members, old)
	if i < 0 {
		c.t.Fatalf("testmember: replace %s: not a member of the cluster", old.name)
	}
	if old.Running() {
		c.t.Fatalf("testmember: replace %s: its process runs", old.name)
	}
	m := newMember(c.t, c.bin, name, old.clientURL, old.peerURL, flags(old.peerURL, old.clientURL), c.args)
	m.netns = old.netns
	c.Members[i] = m
	return m
}

// Forget takes m out of Members (a member removed from the cluster): Leader,
// Live and Endpoints no longer count it. Its process, if any, is still
// stopped when the test ends.
func (c *Cluster) Forget(m *Member) {
	c.Members = slices.DeleteFunc(c.Members, func(o *Member) bool { return o == m })
}

// Start launches every member not running, all at once (members of a new
// cluster serve only once a quorum runs), and waits until each of them
// answers a linearizable read, for 30s at most.
func (c *Cluster) Start(ctx context.Context) error {
	var launched []*Member
	for _, m := range c.Members {
		if m.Running() {
			continue
		}
		if err := m.Launch(); err != nil {
			return err
		}
		launched = append(launched, m)
	}
	errs := make([]error, len(launched))
	var wg sync.WaitGroup
	for i, m := range launched {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.WaitReady(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Endpoints lists every member's client address, host:port, in member order.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.Endpoint()
	}
	return eps
}

// Client returns a new client over every member's endpoint. The caller
// closes it.
func (c *Cluster) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// Live lists the members whose process runs and is not paused.
func (c *Cluster) Live() []*Member {
	var live []*Member
	for _, m := range c.Members {
		if m.Running() && !m.Paused() {
			live = append(live, m)
		}
	}
	return live
}

// Status is what one member's Maintenance.Status answered.
type Status struct {
	Member   *Member
	ID       uint64 // the member's own ID (the answer's header)
	Leader   uint64 // the leader's ID as the member knows it, 0 if none
	RaftTerm uint64
	Index    uint64 // the raft index
	Applied  uint64 // the raft applied index
}

// Status asks the member for its Maintenance.Status, within 1s.
func (m *Member) Status(ctx context.Context) (Status, error) {
	cli, err := m.Client()
	if err != nil {
		return Status{}, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := cli.Status(ctx, m.Endpoint())
	if err != nil {
		if xerr := m.exitErr(); xerr != nil {
			return Status{}, xerr
		}
		return Status{}, fmt.Errorf("status of %s: %w", m.name, err)
	}
	return Status{
		Member:   m,
		ID:       resp.Header.MemberId,
		Leader:   resp.Leader,
		RaftTerm: resp.RaftTerm,
		Index:    resp.RaftIndex,
		Applied:  resp.RaftAppliedIndex,
	}, nil
}

// Leader finds the leader: it asks every live member for its status until
// every one of them answers, they all name the same leader in the same term,
// and that leader is one of them. It returns the leader and the term, or the
// last disagreement when ctx ends.
func (c *Cluster) Leader(ctx context.Context) (*Member, uint64, error) {
	var last error
	for {
		leader, term, err := c.agreedLeader(ctx)
		if err == nil {
			return leader, term, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("testmember: no agreed leader: %w (%v)", last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) agreedLeader(ctx context.Context) (*Member, uint64, error) {
	live := c.Live()
	if len(live) <= len(c.Members)/2 {
		return nil, 0, fmt.Errorf("only %d of %d members live", len(live), len(c.Members))
	}
	sts := make([]Status, len(live))
	errs := make([]error, len(live))
	var wg sync.WaitGroup
	for i, m := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sts[i], errs[i] = m.Status(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	var leader *Member
	for _, st := range sts {
		if st.Leader == 0 || st.Leader != sts[0].Leader || st.RaftTerm != sts[0].RaftTerm {
			return nil, 0, fmt.Errorf("statuses disagree: %s", describe(sts))
		}
		if st.ID == st.Leader {
			leader = st.Member
		}
	}
	if leader == nil {
		return nil, 0, fmt.Errorf("the leader %x is not live: %s", sts[0].Leader, describe(sts))
	}
	return leader, sts[0].RaftTerm, nil
}

func describe(sts []Status) string {
	var parts []string
	for _, st := range sts {
		parts = append(parts, fmt.Sprintf("%s(id %x): leader %x term %d", st.Member.name, st.ID, st.Leader, st.RaftTerm))
	}
	return strings.Join(parts, ", ")
}
