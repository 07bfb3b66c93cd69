package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchFlags are the flags of "watch".
type watchFlags struct {
	prefix, fromKey bool
	rev             int64
	prevKV          bool
	progressNotify  bool
}

func (a *app) watchCommand() *cobra.Command {
	var f watchFlags
	cmd := &cobra.Command{
		Use:   "watch [options] <key> [range_end]",
		Short: "Watches events stream on keys or prefixes",
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := keyRangeOptions("watch", args, f.prefix, f.fromKey)
			if err != nil {
				return err
			}
			if f.rev != 0 {
				opts = append(opts, clientv3.WithRev(f.rev))
			}
			if f.prevKV {
				opts = append(opts, clientv3.WithPrevKV())
			}
			if f.progressNotify {
				opts = append(opts, clientv3.WithProgressNotify())
			}
			if a.writeOut == "table" {
				return errTableUnsupported
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
			// A watch runs until interrupted: --command-timeout does not
			// bound it.
			ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(cmd.Context()))
			defer cancel()
			return a.printWatch(c.Watch(ctx, args[0], opts...), p)
		},
	}
	fs := cmd.Flags()
	fs.BoolVar(&f.prefix, "prefix", false, "watch on a prefix if prefix is set")
	fs.BoolVar(&f.fromKey, "from-key", false, "watch keys that are greater than or equal to the given key using byte compare")
	fs.Int64Var(&f.rev, "rev", 0, "revision to start watching")
	fs.BoolVar(&f.prevKV, "prev-kv", false, "get the previous key-value pair before the event happens")
	fs.BoolVar(&f.progressNotify, "progress-notify", false, "get periodic watch progress notification from server")
	return cmd
}

// printWatch prints each response of wch as etcdctl does, until the watch
// ends: canceled by the server (an error, e.g. a compacted revision) or by
// the command's context (no error).
func (a *app) printWatch(wch clientv3.WatchChan, p printer) error {
	for resp := range wch {
		if resp.Canceled {
			return fmt.Errorf("watch was canceled (%w)", resp.Err())
		}
		if err := resp.Err(); err != nil {
			return err
		}
		if resp.IsProgressNotify() {
			fmt.Fprintf(a.out, "progress notify: %d\n", resp.Header.Revision)
		}
		switch p := p.(type) {
		case *jsonPrinter:
			if err := p.write(resp); err != nil {
				return err
			}
		case *fieldsPrinter:
			p.header(resp.Header)
			for _, ev := range resp.Events {
				fmt.Fprintln(p.w, `"Type" :`, ev.Type)
				if ev.PrevKv != nil {
					p.kv("Prev", ev.PrevKv)
				}
				p.kv("", ev.Kv)
			}
		case *simplePrinter:
			for _, ev := range resp.Events {
				fmt.Fprintln(p.w, ev.Type)
				if ev.PrevKv != nil {
					p.kv(ev.PrevKv, false)
				}
				p.kv(ev.Kv, false)
			}
		}
	}
	return nil
}
