package testmember

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Cluster is n plinth members, m0..m(n-1), that bootstrap together as a new
// cluster: each on free ports with its own data directory, all with the same
// --initial-cluster and --initial-cluster-token.
type Cluster struct {
	t       testing.TB
	Members []*Member
}

// NewCluster prepares a cluster of n members of the binary bin. args are
// added to every member's flags at every start (after the harness's own, so
// e.g. "--election-timeout" can be given). Nothing runs until Start.
func NewCluster(t testing.TB, bin string, n int, args ...string) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("testmember: a cluster of %d members", n)
	}
	// 2n distinct addresses: FreeAddr checks each alone, so two picks
	// could name the same port.
	seen := map[string]bool{}
	addr := func() string {
		for {
			if a := FreeAddr(t); !seen[a] {
				seen[a] = true
				return "http://" + a
			}
		}
	}
	clientURLs, peerURLs := make([]string, n), make([]string, n)
	initial := make([]string, n)
	for i := range n {
		clientURLs[i], peerURLs[i] = addr(), addr()
		initial[i] = fmt.Sprintf("m%d=%s", i, peerURLs[i])
	}
	token := fmt.Sprintf("plinth-test-%d", time.Now().UnixNano())
	c := &Cluster{t: t}
	for i := range n {
		c.Members = append(c.Members, newMember(t, bin, fmt.Sprintf("m%d", i), clientURLs[i], peerURLs[i], []string{
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", token,
		}, args))
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
