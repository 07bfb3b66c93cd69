package main

import (
	"context"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// getFlags are the flags of "get", on the command line and in a txn line.
type getFlags struct {
	prefix, fromKey            bool
	limit, rev                 int64
	keysOnly, countOnly        bool
	printValueOnly             bool
	sortBy, order, consistency string
	minCreateRev, maxCreateRev int64
	minModRev, maxModRev       int64
	stream                     bool
}

func (f *getFlags) bind(fs *pflag.FlagSet) {
	fs.BoolVar(&f.prefix, "prefix", false, "get keys with matching prefix")
	fs.BoolVar(&f.fromKey, "from-key", false, "get keys that are greater than or equal to the given key using byte compare")
	fs.Int64Var(&f.limit, "limit", 0, "maximum number of results")
	fs.Int64Var(&f.rev, "rev", 0, "specify the kv revision")
	fs.BoolVar(&f.keysOnly, "keys-only", false, "get only the keys")
	fs.BoolVar(&f.countOnly, "count-only", false, "get only the count")
	fs.BoolVar(&f.printValueOnly, "print-value-only", false, `only write values when using the "simple" output format`)
	fs.StringVar(&f.sortBy, "sort-by", "", "sort target; CREATE, KEY, MODIFY, VALUE, or VERSION")
	fs.StringVar(&f.order, "order", "", "order of results; ASCEND or DESCEND (ASCEND by default)")
	fs.StringVar(&f.consistency, "consistency", "l", "linearizable(l) or serializable(s)")
	fs.Int64Var(&f.minCreateRev, "min-create-rev", 0, "minimum create revision")
	fs.Int64Var(&f.maxCreateRev, "max-create-rev", 0, "maximum create revision")
	fs.Int64Var(&f.minModRev, "min-mod-rev", 0, "minimum modification revision")
	fs.Int64Var(&f.maxModRev, "max-mod-rev", 0, "maximum modification revision")
}

// request checks the arguments and flags and returns the key and the client
// options of the range they ask for.
func (f *getFlags) request(args []string) (string, []clientv3.OpOption, error) {
	opts, err := keyRangeOptions("get", args, f.prefix, f.fromKey)
	if err != nil {
		return "", nil, err
	}
	if f.keysOnly && f.countOnly {
		return "", nil, badArgs("`--keys-only` and `--count-only` cannot be set at the same time, choose one")
	}
	switch f.consistency {
	case "l":
	case "s":
		opts = append(opts, clientv3.WithSerializable())
	default:
		return "", nil, badFeature("unknown consistency flag %q", f.consistency)
	}
	if f.sortBy != "" || f.order != "" {
		target, order, err := sortOption(f.sortBy, f.order)
		if err != nil {
			return "", nil, err
		}
		opts = append(opts, clientv3.WithSort(target, order))
	}
	for _, o := range []struct {
		v   int64
		opt func(int64) clientv3.OpOption
	}{
		{f.limit, clientv3.WithLimit},
		{f.rev, clientv3.WithRev},
		{f.minCreateRev, clientv3.WithMinCreateRev},
		{f.maxCreateRev, clientv3.WithMaxCreateRev},
		{f.minModRev, clientv3.WithMinModRev},
		{f.maxModRev, clientv3.WithMaxModRev},
	} {
		if o.v != 0 {
			opts = append(opts, o.opt(o.v))
		}
	}
	if f.keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if f.countOnly {
		opts = append(opts, clientv3.WithCountOnly())
	}
	return args[0], opts, nil
}

// sortOption maps --sort-by and --order (any case) to the client's values.
// An order without a target sorts by key; a target without an order leaves
// the order to the server, which then sorts ascending.
func sortOption(by, order string) (clientv3.SortTarget, clientv3.SortOrder, error) {
	targets := map[string]clientv3.SortTarget{
		"":        clientv3.SortByKey,
		"KEY":     clientv3.SortByKey,
		"CREATE":  clientv3.SortByCreateRevision,
		"MODIFY":  clientv3.SortByModRevision,
		"VALUE":   clientv3.SortByValue,
		"VERSION": clientv3.SortByVersion,
	}
	orders := map[string]clientv3.SortOrder{
		"":        clientv3.SortNone,
		"ASCEND":  clientv3.SortAscend,
		"DESCEND": clientv3.SortDescend,
	}
	t, ok := targets[strings.ToUpper(by)]
	if !ok {
		return 0, 0, badFeature("bad sort target %v", by)
	}
	o, ok := orders[strings.ToUpper(order)]
	if !ok {
		return 0, 0, badFeature("bad sort order %v", order)
	}
	return t, o, nil
}

func (a *app) getCommand() *cobra.Command {
	var f getFlags
	cmd := &cobra.Command{
		Use:   "get [options] <key> [range_end]",
		Short: "Gets the key or a range of keys",
		RunE: func(cmd *cobra.Command, args []string) error {
			key, opts, err := f.request(args)
			if err != nil {
				return err
			}
			p, err := a.printer()
			if err != nil {
				return err
			}
			if f.printValueOnly && a.writeOut != "simple" {
				return badArgs("print-value-only is only for `--write-out=simple`")
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := getRange(ctx, c, key, opts, f.stream)
				if err != nil {
					return err
				}
				return p.get(resp, rangeShape{valueOnly: f.printValueOnly, countOnly: f.countOnly})
			})
		},
	}
	f.bind(cmd.Flags())
	cmd.Flags().BoolVar(&f.stream, "stream", false, "use the RangeStream RPC")
	return cmd
}

// getRange reads a range with Range, or with RangeStream when stream is set
// (the chunks joined into one answer).
func getRange(ctx context.Context, c *clientv3.Client, key string, opts []clientv3.OpOption, stream bool) (*pb.RangeResponse, error) {
	if !stream {
		resp, err := c.Get(ctx, key, opts...)
		if err != nil {
			return nil, err
		}
		return (*pb.RangeResponse)(resp), nil
	}
	ch, err := c.GetStream(ctx, key, opts...)
	if err != nil {
		return nil, err
	}
	// Server errors are returned as they are, so that they print as etcdctl
	// prints them ("etcdserver: ...").
	resp, err := clientv3.GetStreamToGetResponse(ch)
	if err != nil {
		return nil, err
	}
	return (*pb.RangeResponse)(resp), nil
}

// keyRangeOptions checks the KEY [RANGE_END] arguments of get and del with
// their --prefix and --from-key flags, and returns the client options of the
// range they name.
func keyRangeOptions(command string, args []string, prefix, fromKey bool) ([]clientv3.OpOption, error) {
	if len(args) == 0 || len(args) > 2 {
		return nil, badArgs("%s command needs one argument as key and an optional argument as range_end", command)
	}
	if prefix && fromKey {
		return nil, badArgs("`--prefix` and `--from-key` cannot be set at the same time, choose one")
	}
	switch {
	case len(args) == 2 && (prefix || fromKey):
		return nil, badArgs("too many arguments, only accept one argument when `--prefix` or `--from-key` is set")
	case len(args) == 2:
		return []clientv3.OpOption{clientv3.WithRange(args[1])}, nil
	case prefix:
		return []clientv3.OpOption{clientv3.WithPrefix()}, nil
	case fromKey:
		return []clientv3.OpOption{clientv3.WithFromKey()}, nil
	}
	return nil, nil
}
