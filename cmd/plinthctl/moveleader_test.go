package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
)

// TestMoveLeader moves leadership around a three-member cluster with
// move-leader given every endpoint, as an operator runs it, and checks
// etcdctl's refusals: an argument that is no hex ID, endpoints without the
// leader, and a transferee that is no member.
func TestMoveLeader(t *testing.T) {
	bin, err := testmember.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := testmember.NewCluster(t, bin, 3)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	all := strings.Join(c.Endpoints(), ",")

	leader, _, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	from, err := leader.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var follower *testmember.Member
	for _, m := range c.Members {
		if m != leader {
			follower = m
			break
		}
	}
	to, err := follower.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}

	wantOut(t, all, "", fmt.Sprintf("Leadership transferred from %x to %x\n", from.ID, to.ID), "move-leader", fmt.Sprintf("%x", to.ID))
	now, _, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if now != follower {
		t.Fatalf("after move-leader the leader is %s, want %s", now.Name(), follower.Name())
	}

	wantFail(t, all, exitBadArgs, "move-leader command needs 1 argument", "move-leader")
	wantFail(t, all, exitBadArgs, "expecting ID in Hex", "move-leader", "not-hex")
	wantFail(t, all, exitError, "etcdserver: bad leader transferee", "move-leader", "1234")
	// The old leader is a follower now: alone it cannot move leadership.
	wantFail(t, leader.Endpoint(), exitBadArgs, "no leader endpoint given at ["+leader.Endpoint()+"]", "move-leader", fmt.Sprintf("%x", from.ID))
	wantFail(t, all, exitBadFeature, "table not supported as output format", "-w", "table", "move-leader", fmt.Sprintf("%x", from.ID))
}
