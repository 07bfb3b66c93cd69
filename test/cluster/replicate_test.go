package cluster

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestReplicateAndElect walks a three-member cluster through the basic
// promises of replication: a write through a follower (forwarded to the
// leader) is seen by linearizable reads on every other member at once and by
// their serializable reads soon after; when the leader is killed -9 the
// survivors elect a new leader in a higher term and keep taking writes; and
// the killed member, restarted on its data, catches up with the writes it
// missed.
func TestReplicateAndElect(t *testing.T) {
	ctx := t.Context()
	c := startCluster(t, 3)

	checkMemberList(t, c)

	leader, term := findLeader(t, c)
	t.Logf("leader %s in term %d", leader.Name(), term)
	var follower *testmember.Member
	for _, m := range c.Members {
		if m != leader {
			follower = m
			break
		}
	}

	// A put through a follower, read back from each of the others.
	fcli := client(t, follower.Endpoint())
	put, err := fcli.Put(ctx, "replicate/k", "v1")
	if err != nil {
		t.Fatalf("put through follower %s: %v", follower.Name(), err)
	}
	rev := put.Header.Revision
	for _, m := range c.Members {
		if m == follower {
			continue
		}
		cli := client(t, m.Endpoint())
		// Linearizable: the write was acknowledged before the read began,
		// so the read must see it, however far the member's apply lags.
		resp, err := cli.Get(ctx, "replicate/k", linearizable()...)
		if err != nil {
			t.Fatalf("linearizable get on %s: %v", m.Name(), err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" || resp.Kvs[0].ModRevision != rev {
			t.Errorf("linearizable get on %s after the put (revision %d) acknowledged: %v", m.Name(), rev, resp.Kvs)
		}
		// Serializable: answered from the member's state, which may lag;
		// it must hold the write once it applied the revision.
		if err := waitRevision(ctx, cli, rev); err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
		resp, err = cli.Get(ctx, "replicate/k", clientv3.WithSerializable())
		if err != nil {
			t.Fatalf("serializable get on %s: %v", m.Name(), err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" || resp.Kvs[0].ModRevision != rev {
			t.Errorf("serializable get on %s at revision %d: %v", m.Name(), resp.Header.Revision, resp.Kvs)
		}
	}

	// Kill the leader: the survivors elect another, in a higher term.
	killed := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	newLeader, newTerm := findLeader(t, c)
	t.Logf("killed leader %s; %s leads in term %d after %v", leader.Name(), newLeader.Name(), newTerm, time.Since(killed).Round(time.Millisecond))
	if newLeader == leader || newTerm <= term {
		t.Fatalf("after killing %s (term %d): leader %s in term %d", leader.Name(), term, newLeader.Name(), newTerm)
	}

	// Writes keep working through each survivor.
	var acked []ackedWrite
	for i, m := range c.Live() {
		cli := client(t, m.Endpoint())
		for j := range 5 {
			key, value := fmt.Sprintf("replicate/down/%s/%d", m.Name(), j), fmt.Sprintf("v%d.%d", i, j)
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			resp, err := cli.Put(wctx, key, value)
			cancel()
			if err != nil {
				t.Fatalf("put %s through %s with %s down: %v", key, m.Name(), leader.Name(), err)
			}
			acked = append(acked, ackedWrite{key: key, value: value, rev: resp.Header.Revision})
		}
	}

	// The killed member restarts and catches up: once it answered a
	// linearizable read, its own state holds every write acknowledged
	// before, so a serializable read on it sees them without waiting.
	if err := restart(ctx, c, leader); err != nil {
		t.Fatal(err)
	}
	cli := client(t, leader.Endpoint())
	for _, w := range acked {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := cli.Get(rctx, w.key, clientv3.WithSerializable())
		cancel()
		if err != nil {
			t.Fatalf("serializable get on restarted %s: %v", leader.Name(), err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != w.value || resp.Kvs[0].ModRevision != w.rev {
			t.Errorf("restarted %s has not caught up: %s is %v at revision %d, want %q at mod revision %d", leader.Name(), w.key, resp.Kvs, resp.Header.Revision, w.value, w.rev)
		}
	}
	report(t, "acknowledged writes", checkAcked(ctx, c, append(acked, ackedWrite{key: "replicate/k", value: "v1", rev: rev})))

	final, finalTerm := findLeader(t, c)
	t.Logf("all three members back; %s leads in term %d", final.Name(), finalTerm)
}

// findLeader waits, for 15s at most, until the live members agree on a leader.
func findLeader(t *testing.T, c *testmember.Cluster) (*testmember.Member, uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	m, term, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m, term
}

// checkMemberList checks that every member lists the cluster's members, with
// their names and peer and client URLs, and the same IDs.
func checkMemberList(t *testing.T, c *testmember.Cluster) {
	t.Helper()
	var want []string
	for _, m := range c.Members {
		want = append(want, fmt.Sprintf("%s %s http://%s", m.Name(), m.PeerURL(), m.Endpoint()))
	}
	var first []string
	for _, m := range c.Members {
		resp, err := client(t, m.Endpoint()).MemberList(t.Context())
		if err != nil {
			t.Fatalf("member list of %s: %v", m.Name(), err)
		}
		var got, ids []string
		for _, mm := range resp.Members {
			got = append(got, fmt.Sprintf("%s %v %v", mm.Name, joinOrEmpty(mm.PeerURLs), joinOrEmpty(mm.ClientURLs)))
			ids = append(ids, fmt.Sprintf("%s=%x", mm.Name, mm.ID))
		}
		slices.Sort(got)
		slices.Sort(ids)
		if !slices.Equal(got, want) {
			t.Errorf("member list of %s:\n  %v\nwant\n  %v", m.Name(), got, want)
		}
		if first == nil {
			first = ids
		} else if !slices.Equal(ids, first) {
			t.Errorf("member list of %s has IDs %v, %s has %v", m.Name(), ids, c.Members[0].Name(), first)
		}
	}
}

func joinOrEmpty(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return fmt.Sprint(s)
}
