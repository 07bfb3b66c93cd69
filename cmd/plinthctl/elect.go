package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// electCommand is etcdctl's elect: the client's Election recipe (over KV,
// Lease and Watch) under a session lease of 60 seconds. With a proposal it
// campaigns, prints the leader's key and value once elected, and leads until
// interrupted, then resigns; with -l it prints the leader's key and value
// each time they change, until interrupted.
func (a *app) electCommand() *cobra.Command {
	var listen bool
	cmd := &cobra.Command{
		Use:   "elect <election-name> [proposal]",
		Short: "Observes and participates in leader election",
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) != 1 && len(args) != 2:
				return badArgs("elect takes one election name argument and an optional proposal argument")
			case len(args) == 1 && !listen:
				return badArgs("no proposal argument but -l not set")
			case len(args) == 2 && listen:
				return badArgs("proposal given but -l is set")
			}
			p, err := a.printer()
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			if listen {
				return observeLeader(cmd.Context(), c, p, args[0])
			}
			return campaign(cmd.Context(), c, p, args[0], args[1])
		},
	}
	cmd.Flags().BoolVarP(&listen, "listen", "l", false, "observation mode")
	return cmd
}

// observeLeader prints the election's leader each time it changes, until
// ctx ends.
func observeLeader(ctx context.Context, c *clientv3.Client, p printer, name string) error {
	s, err := concurrency.NewSession(c)
	if err != nil {
		return err
	}
	e := concurrency.NewElection(s, name)
	for resp := range e.Observe(ctx) {
		if err := p.get((*pb.RangeResponse)(resp), rangeShape{}); err != nil {
			return err
		}
	}
	if ctx.Err() == nil {
		return errors.New("elect: observer lost")
	}
	return nil
}

// campaign waits until elected, prints the leader's key and value, and
// leads until ctx ends; then it resigns.
func campaign(ctx context.Context, c *clientv3.Client, p printer, name, proposal string) error {
	s, err := concurrency.NewSession(c)
	if err != nil {
		return err
	}
	e := concurrency.NewElection(s, name)
	if err := e.Campaign(ctx, proposal); err != nil {
		return err
	}
	resp, err := c.Get(ctx, e.Key())
	if err != nil {
		return err
	}
	if err := p.get((*pb.RangeResponse)(resp), rangeShape{}); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-s.Done():
		return errors.New("elect: session expired")
	}
	return e.Resign(context.WithoutCancel(ctx))
}
