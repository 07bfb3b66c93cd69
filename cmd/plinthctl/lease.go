package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The lease commands: etcdctl's arguments, flags and output. Lease IDs are
// hexadecimal on the command line and in the simple output, as in etcdctl.

func (a *app) leaseCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lease <subcommand>",
		Short: "Lease related commands",
	}
	cmd.AddCommand(a.leaseGrantCommand(), a.leaseRevokeCommand(), a.leaseTimeToLiveCommand(),
		a.leaseListCommand(), a.leaseKeepAliveCommand())
	return cmd
}

func (a *app) leaseGrantCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "grant <ttl>",
		Short: "Creates leases",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("lease grant command needs TTL argument")
			}
			ttl, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return badArgs("bad TTL (%w)", err)
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.Grant(ctx, ttl)
				if err != nil {
					return fmt.Errorf("failed to grant lease (%w)", err)
				}
				return a.printLease(resp, resp.ResponseHeader, func() {
					fmt.Fprintf(a.out, "lease %016x granted with TTL(%ds)\n", resp.ID, resp.TTL)
				}, fieldID{name: "ID", value: int64(resp.ID)}, fieldID{name: "TTL", value: resp.TTL})
			})
		},
	}
}

func (a *app) leaseRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke <leaseID>",
		Short: "Revokes leases",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("lease revoke command needs 1 argument")
			}
			id, err := leaseFromArg(args[0])
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.Revoke(ctx, id)
				if err != nil {
					return fmt.Errorf("failed to revoke lease (%w)", err)
				}
				return a.printLease((*pb.LeaseRevokeResponse)(resp), resp.Header, func() {
					fmt.Fprintf(a.out, "lease %016x revoked\n", id)
				})
			})
		},
	}
}

func (a *app) leaseTimeToLiveCommand() *cobra.Command {
	var keys bool
	cmd := &cobra.Command{
		Use:   "timetolive <leaseID> [options]",
		Short: "Get lease information",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("lease timetolive command needs lease ID as argument")
			}
			id, err := leaseFromArg(args[0])
			if err != nil {
				return err
			}
			var opts []clientv3.LeaseOption
			if keys {
				opts = append(opts, clientv3.WithAttachedKeys())
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.TimeToLive(ctx, id, opts...)
				if err != nil {
					return withCode(exitBadConnection, err)
				}
				fields := []fieldID{{name: "ID", value: int64(resp.ID)}, {name: "TTL", value: resp.TTL}, {name: "GrantedTTL", value: resp.GrantedTTL}}
				for _, k := range resp.Keys {
					fields = append(fields, fieldID{name: "Key", key: k})
				}
				return a.printLease(resp, resp.ResponseHeader, func() {
					if resp.GrantedTTL == 0 && resp.TTL == -1 {
						fmt.Fprintf(a.out, "lease %016x already expired\n", resp.ID)
						return
					}
					line := fmt.Sprintf("lease %016x granted with TTL(%ds), remaining(%ds)", resp.ID, resp.GrantedTTL, resp.TTL)
					if keys {
						ks := make([]string, len(resp.Keys))
						for i, k := range resp.Keys {
							ks[i] = string(k)
						}
						line += fmt.Sprintf(", attached keys(%v)", ks)
					}
					fmt.Fprintln(a.out, line)
				}, fields...)
			})
		},
	}
	cmd.Flags().BoolVar(&keys, "keys", false, "Get keys attached to this lease")
	return cmd
}

func (a *app) leaseListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List all active leases",
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.Leases(ctx)
				if err != nil {
					return withCode(exitBadConnection, err)
				}
				var fields []fieldID
				for _, l := range resp.Leases {
					fields = append(fields, fieldID{name: "ID", value: int64(l.ID)})
				}
				return a.printLease(resp, resp.ResponseHeader, func() {
					fmt.Fprintf(a.out, "found %d leases\n", len(resp.Leases))
					for _, l := range resp.Leases {
						fmt.Fprintf(a.out, "%016x\n", l.ID)
					}
				}, fields...)
			})
		},
	}
}

func (a *app) leaseKeepAliveCommand() *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "keep-alive [options] <leaseID>",
		Short: "Keeps leases alive (renew)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("lease keep-alive command needs lease ID as argument")
			}
			id, err := leaseFromArg(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			show := func(resp *clientv3.LeaseKeepAliveResponse) error {
				return a.printLease(resp, resp.ResponseHeader, func() {
					fmt.Fprintf(a.out, "lease %016x keepalived with TTL(%d)\n", resp.ID, resp.TTL)
				}, fieldID{name: "ID", value: int64(resp.ID)}, fieldID{name: "TTL", value: resp.TTL})
			}
			if once {
				ctx, cancel := context.WithTimeout(cmd.Context(), a.commandTimeout)
				defer cancel()
				resp, err := c.KeepAliveOnce(ctx, id)
				if err != nil {
					return withCode(exitBadConnection, err)
				}
				return show(resp)
			}
			// Until the lease is gone or the command is interrupted.
			respc, err := c.KeepAlive(cmd.Context(), id)
			if err != nil {
				return withCode(exitBadConnection, err)
			}
			for resp := range respc {
				if err := show(resp); err != nil {
					return err
				}
			}
			if a.writeOut == "simple" {
				fmt.Fprintf(a.out, "lease %016x expired or revoked.\n", id)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&once, "once", false, "Resets the keep-alive time to its original value and exits immediately")
	return cmd
}

// leaseFromArg parses a lease ID argument, given in hexadecimal.
func leaseFromArg(arg string) (clientv3.LeaseID, error) {
	id, err := parseLeaseID(arg)
	if err != nil {
		return 0, badArgs("bad lease ID arg (%w), expecting ID in Hex", err)
	}
	return id, nil
}

// fieldID is one line of the fields output of a lease answer: a number
// (an ID, printed in hexadecimal under --hex, or a TTL) or a key.
type fieldID struct {
	name  string
	value int64
	key   []byte // for "Key" lines
}

// printLease prints a lease answer in the --write-out format: simple prints
// etcdctl's sentence, json the answer as etcdctl marshals it (the client's
// response type), fields the header and then fields.
func (a *app) printLease(resp any, header *pb.ResponseHeader, simple func(), fields ...fieldID) error {
	switch a.writeOut {
	case "simple":
		simple()
		return nil
	case "json":
		b, err := json.Marshal(resp)
		if err != nil {
			return fmt.Errorf("json output: %w", err)
		}
		fmt.Fprintln(a.out, string(b))
		return nil
	case "fields":
		p := &fieldsPrinter{w: a.out, hex: a.hex}
		p.header(header)
		for _, f := range fields {
			switch {
			case f.name == "Key":
				fmt.Fprintf(a.out, "\"Key\" : %q\n", f.key)
			case f.name == "ID" && a.hex:
				fmt.Fprintf(a.out, "\"ID\" : %016x\n", f.value)
			default:
				fmt.Fprintf(a.out, "%q : %d\n", f.name, f.value)
			}
		}
		return nil
	case "table":
		return errTableUnsupported
	}
	_, err := a.printer()
	return err
}
