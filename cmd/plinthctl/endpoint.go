package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// endpointStatus is the answer of one endpoint to Status. Its JSON is the
// shape of etcdctl's endpoint status -w json.
type endpointStatus struct {
	Endpoint string             `json:"Endpoint"`
	Status   *pb.StatusResponse `json:"Status"`
}

func (a *app) endpointCommand() *cobra.Command {
	var cluster bool
	cmd := &cobra.Command{
		Use:   "endpoint <subcommand>",
		Short: "Endpoint related commands",
	}
	cmd.PersistentFlags().BoolVar(&cluster, "cluster", false, "use all endpoints from the cluster member list")
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Prints out the status of endpoints specified in `--endpoints` flag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer()
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			eps := a.endpoints
			if cluster {
				if eps, err = a.memberEndpoints(cmd.Context(), c); err != nil {
					return err
				}
			}
			var statuses []endpointStatus
			failed := false
			for _, ep := range eps {
				ctx, cancel := context.WithTimeout(cmd.Context(), a.commandTimeout)
				resp, err := c.Status(ctx, ep)
				cancel()
				if err != nil {
					// As etcdctl: report each endpoint that fails, print the
					// others, then exit 1.
					fmt.Fprintf(a.errOut, "Failed to get the status of endpoint %s (%v)\n", ep, err)
					failed = true
					continue
				}
				statuses = append(statuses, endpointStatus{Endpoint: ep, Status: (*pb.StatusResponse)(resp)})
			}
			if err := p.status(statuses); err != nil {
				return err
			}
			if failed {
				return &codedError{code: exitError, err: fmt.Errorf("endpoint status failed"), reported: true}
			}
			return nil
		},
	})
	return cmd
}

// memberEndpoints lists the client URLs of every member of the cluster.
func (a *app) memberEndpoints(ctx context.Context, c *clientv3.Client) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, a.commandTimeout)
	defer cancel()
	resp, err := c.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	var eps []string
	for _, m := range resp.Members {
		eps = append(eps, m.ClientURLs...)
	}
	return eps, nil
}
