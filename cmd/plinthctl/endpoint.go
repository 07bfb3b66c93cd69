package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
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
	cmd.AddCommand(a.endpointHealthCommand(&cluster))
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
		return nil, fmt.Errorf("failed to fetch endpoints from etcd cluster member list: %w", err)
	}
	var eps []string
	for _, m := range resp.Members {
		eps = append(eps, m.ClientURLs...)
	}
	return eps, nil
}

// endpointHealth is the health of one endpoint. Its JSON is the shape of
// etcdctl's endpoint health -w json.
type endpointHealth struct {
	Endpoint string `json:"endpoint"`
	Health   bool   `json:"health"`
	Took     string `json:"took"`
	Error    string `json:"error,omitempty"`
}

func (a *app) endpointHealthCommand(cluster *bool) *cobra.Command {
	return &cobra.Command{
		Use:   "health",
		Short: "Checks the healthiness of endpoints specified in `--endpoints` flag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer()
			if err != nil {
				return err
			}
			eps := a.endpoints
			if *cluster {
				c, err := a.client()
				if err != nil {
					return err
				}
				eps, err = a.memberEndpoints(cmd.Context(), c)
				c.Close()
				if err != nil {
					return err
				}
			}
			// Every endpoint is checked at once, as etcdctl does; the
			// answers are printed in the order of the endpoints (etcdctl
			// prints them as they come).
			hs := make([]endpointHealth, len(eps))
			var wg sync.WaitGroup
			for i, ep := range eps {
				wg.Go(func() { hs[i] = a.checkHealth(cmd.Context(), ep) })
			}
			wg.Wait()
			if err := p.health(hs); err != nil {
				return err
			}
			for _, h := range hs {
				if h.Error != "" {
					return fmt.Errorf("unhealthy cluster")
				}
			}
			return nil
		},
	}
}

// checkHealth checks one endpoint the way etcdctl does: it is healthy if it
// answers a linearizable get of the key "health" (which needs a leader and a
// quorum; "permission denied" counts as an answer) and lists no active alarm.
// took is the time of the get.
func (a *app) checkHealth(ctx context.Context, ep string) endpointHealth {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: a.dialTimeout, Logger: zap.NewNop()})
	if err != nil {
		return endpointHealth{Endpoint: ep, Error: err.Error()}
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, a.commandTimeout)
	defer cancel()
	start := time.Now()
	_, err = c.Get(ctx, "health")
	h := endpointHealth{Endpoint: ep, Took: time.Since(start).String()}
	if err != nil && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		h.Error = err.Error()
		return h
	}
	alarms, err := c.AlarmList(ctx)
	switch {
	case err != nil:
		h.Error = "Unable to fetch the alarm list"
	case len(alarms.Alarms) > 0:
		h.Error = "Active Alarm(s): "
		for _, al := range alarms.Alarms {
			switch al.Alarm {
			case pb.AlarmType_NOSPACE, pb.AlarmType_CORRUPT:
				h.Error += al.Alarm.String() + " "
			default:
				h.Error += "UNKNOWN "
			}
		}
	default:
		h.Health = true
	}
	return h
}
