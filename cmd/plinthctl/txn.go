package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func (a *app) txnCommand() *cobra.Command {
	var interactive bool
	cmd := &cobra.Command{
		Use:   "txn [options] (read from stdin)",
		Short: "Txn processes all the requests in one transaction",
		Long: `Txn reads a transaction from stdin: compares, a blank line, the requests to
run when all compares hold, a blank line, the requests to run otherwise, and
a blank line. For example:

  mod("key1") > "0"

  put key1 "overwrote-key1"

  put key1 "created-key1"
  put key2 "some extra key"

A compare is target("key") op "value": target is version (ver), create (c),
mod (m), value (val) or lease (a hexadecimal ID); op is =, !=, < or >.
Requests are get, put and del lines with the flags of those commands; quote
keys and values with spaces as Go strings ("a b", "line\nbreak").
`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 0 {
				return badArgs("txn command does not accept argument")
			}
			p, err := a.printer()
			if err != nil {
				return err
			}
			var prompt func(string)
			if interactive {
				prompt = func(title string) { fmt.Fprintln(a.out, title) }
			}
			t, err := readTxn(a.in, prompt)
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.Txn(ctx).If(t.cmps...).Then(t.success...).Else(t.failure...).Commit()
				if err != nil {
					return err
				}
				return p.txn((*pb.TxnResponse)(resp))
			})
		},
	}
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "input transaction in interactive mode")
	return cmd
}
