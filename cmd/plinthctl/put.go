package main

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// putFlags are the flags of "put", on the command line and in a txn line.
type putFlags struct {
	prevKV      bool
	lease       string
	ignoreValue bool
	ignoreLease bool
}

func (f *putFlags) bind(fs *pflag.FlagSet) {
	fs.BoolVar(&f.prevKV, "prev-kv", false, "return the previous key-value pair before modification")
	fs.StringVar(&f.lease, "lease", "0", "lease ID (in hexadecimal) to attach to the key")
	fs.BoolVar(&f.ignoreValue, "ignore-value", false, "updates the key using its current value")
	fs.BoolVar(&f.ignoreLease, "ignore-lease", false, "updates the key using its current lease")
}

var errPutArgs = badArgs("put command needs 1 argument and input from stdin or 2 arguments")

// request checks the arguments and flags and returns the key, the value and
// the client options of the put. With one argument the value is all of stdin
// (nil stdin, as in a txn line, means there is none); with --ignore-value no
// value is needed.
func (f *putFlags) request(args []string, stdin io.Reader) (string, string, []clientv3.OpOption, error) {
	if len(args) == 0 || len(args) > 2 {
		return "", "", nil, errPutArgs
	}
	key, value := args[0], ""
	switch {
	case len(args) == 2:
		value = args[1]
	case f.ignoreValue:
	case stdin == nil:
		return "", "", nil, errPutArgs
	default:
		b, err := io.ReadAll(stdin)
		if err != nil {
			return "", "", nil, withCode(exitIO, fmt.Errorf("put: read value from stdin: %w", err))
		}
		if len(b) == 0 {
			return "", "", nil, errPutArgs
		}
		value = string(b)
	}
	id, err := parseLeaseID(f.lease)
	if err != nil {
		return "", "", nil, badArgs("bad lease ID (%v), expecting ID in Hex", err)
	}
	var opts []clientv3.OpOption
	if id != 0 {
		opts = append(opts, clientv3.WithLease(id))
	}
	if f.prevKV {
		opts = append(opts, clientv3.WithPrevKV())
	}
	if f.ignoreValue {
		opts = append(opts, clientv3.WithIgnoreValue())
	}
	if f.ignoreLease {
		opts = append(opts, clientv3.WithIgnoreLease())
	}
	return key, value, opts, nil
}

// parseLeaseID parses a lease ID written in hexadecimal, as etcdctl and
// "lease grant" write them.
func parseLeaseID(s string) (clientv3.LeaseID, error) {
	id, err := strconv.ParseInt(s, 16, 64)
	if err != nil {
		return 0, err
	}
	return clientv3.LeaseID(id), nil
}

func (a *app) putCommand() *cobra.Command {
	var f putFlags
	cmd := &cobra.Command{
		Use:   "put [options] <key> <value> (<value> can also be given from stdin)",
		Short: "Puts the given key into the store",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer()
			if err != nil {
				return err
			}
			key, value, opts, err := f.request(args, a.in)
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.Put(ctx, key, value, opts...)
				if err != nil {
					return err
				}
				return p.put((*pb.PutResponse)(resp))
			})
		},
	}
	f.bind(cmd.Flags())
	return cmd
}
