package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func (a *app) compactionCommand() *cobra.Command {
	var physical bool
	cmd := &cobra.Command{
		Use:   "compaction [options] <revision>",
		Short: "Compacts the event history in the server",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("compaction command needs 1 argument")
			}
			rev, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("compaction: bad revision %q: %w", args[0], err)
			}
			var opts []clientv3.CompactOption
			if physical {
				opts = append(opts, clientv3.WithCompactPhysical())
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				if _, err := c.Compact(ctx, rev, opts...); err != nil {
					return err
				}
				// etcdctl prints this line whatever --write-out says.
				fmt.Fprintf(a.out, "compacted revision %d\n", rev)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&physical, "physical", false, "'true' to wait for compaction to physically remove all old revisions")
	return cmd
}
