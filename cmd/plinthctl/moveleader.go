package main

import (
	"context"
	"strconv"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func (a *app) moveLeaderCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "move-leader <transferee-member-id>",
		Short: "Transfers leadership to another cluster member.",
		Long: `Transfers leadership from the current leader, which must be one of --endpoints,
to the member with the given ID (hex, as member list prints it).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("move-leader command needs 1 argument")
			}
			target, err := strconv.ParseUint(args[0], 16, 64)
			if err != nil {
				return badArgs("bad transferee ID (%v), expecting ID in Hex", err)
			}
			p, err := a.changePrinter()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), a.commandTimeout)
			defer cancel()
			// Only the leader takes MoveLeader, and the client would send
			// it to any endpoint: find the leader among --endpoints and
			// talk to it alone.
			leader, leaderID, err := a.leaderClient(ctx)
			if err != nil {
				return err
			}
			defer leader.Close()
			resp, err := leader.MoveLeader(ctx, target)
			if err != nil {
				return err
			}
			return p.moveLeader(leaderID, target, (*pb.MoveLeaderResponse)(resp))
		},
	}
}

// leaderClient returns a client of the one endpoint in --endpoints that is
// the leader, and the leader's member ID. The caller closes the client.
func (a *app) leaderClient(ctx context.Context) (*clientv3.Client, uint64, error) {
	for _, ep := range a.endpoints {
		c, err := a.clientOf([]string{ep})
		if err != nil {
			return nil, 0, err
		}
		resp, err := c.Status(ctx, ep)
		if err != nil {
			c.Close()
			return nil, 0, err
		}
		if resp.Header.GetMemberId() == resp.Leader {
			return c, resp.Leader, nil
		}
		c.Close()
	}
	return nil, 0, badArgs("no leader endpoint given at %v", a.endpoints)
}
