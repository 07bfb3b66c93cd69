package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// testCluster is a cluster of in-process members on loopback.
type testCluster struct {
	t       *testing.T
	cfgs    []Config
	servers []*Server // nil when stopped
}

func freeLoopbackURL(t *testing.T) url.URL {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}

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
			Logger:              slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
	}
	t.Cleanup(func() {
		for i := range c.servers {
			c.stop(i)
		}
	})
	return c
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
	c := newTestCluster(t, 3, "replicate")
	for i := range 3 {
		c.start(i)
	}
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
