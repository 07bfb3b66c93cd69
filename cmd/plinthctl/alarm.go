package main

import (
	"context"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func (a *app) alarmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alarm <subcommand>",
		Short: "Alarm related commands",
	}
	cmd.AddCommand(
		a.alarmSubcommand("list", "Lists all alarms", func(ctx context.Context, c *clientv3.Client) (*clientv3.AlarmResponse, error) {
			return c.AlarmList(ctx)
		}),
		// The client lists the alarms and deactivates each; it prints the
		// ones it deactivated.
		a.alarmSubcommand("disarm", "Disarms all alarms", func(ctx context.Context, c *clientv3.Client) (*clientv3.AlarmResponse, error) {
			return c.AlarmDisarm(ctx, &clientv3.AlarmMember{})
		}),
	)
	return cmd
}

func (a *app) alarmSubcommand(name, short string, call func(context.Context, *clientv3.Client) (*clientv3.AlarmResponse, error)) *cobra.Command {
	return &cobra.Command{
		Use:   name,
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 0 {
				return badArgs("alarm %s command accepts no arguments", name)
			}
			p, err := a.printer()
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := call(ctx, c)
				if err != nil {
					return err
				}
				return p.alarm((*pb.AlarmResponse)(resp))
			})
		},
	}
}
