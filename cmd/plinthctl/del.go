package main

import (
	"context"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// delFlags are the flags of "del", on the command line and in a txn line.
type delFlags struct {
	prefix, fromKey bool
	prevKV          bool
}

func (f *delFlags) bind(fs *pflag.FlagSet) {
	fs.BoolVar(&f.prefix, "prefix", false, "delete keys with matching prefix")
	fs.BoolVar(&f.fromKey, "from-key", false, "delete keys that are greater than or equal to the given key using byte compare")
	fs.BoolVar(&f.prevKV, "prev-kv", false, "return deleted key-value pairs")
}

// request checks the arguments and flags and returns the key and the client
// options of the delete.
func (f *delFlags) request(args []string) (string, []clientv3.OpOption, error) {
	opts, err := keyRangeOptions("del", args, f.prefix, f.fromKey)
	if err != nil {
		return "", nil, err
	}
	if f.prevKV {
		opts = append(opts, clientv3.WithPrevKV())
	}
	return args[0], opts, nil
}

func (a *app) delCommand() *cobra.Command {
	var f delFlags
	cmd := &cobra.Command{
		Use:   "del [options] <key> [range_end]",
		Short: "Removes the specified key or range of keys [key, range_end)",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer()
			if err != nil {
				return err
			}
			key, opts, err := f.request(args)
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.Delete(ctx, key, opts...)
				if err != nil {
					return err
				}
				return p.del((*pb.DeleteRangeResponse)(resp))
			})
		},
	}
	f.bind(cmd.Flags())
	return cmd
}
