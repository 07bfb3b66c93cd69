package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchFlags are the flags of "watch".
type watchFlags struct {
	prefix, fromKey bool
	rev             int64
	prevKV          bool
	progressNotify  bool
	interactive     bool
}

// define adds the flags of a watch to fs: those of the command, and those of
// a "watch" line of interactive mode.
func (f *watchFlags) define(fs *pflag.FlagSet) {
	fs.BoolVar(&f.prefix, "prefix", false, "watch on a prefix if prefix is set")
	fs.BoolVar(&f.fromKey, "from-key", false, "watch keys that are greater than or equal to the given key using byte compare")
	fs.Int64Var(&f.rev, "rev", 0, "revision to start watching")
	fs.BoolVar(&f.prevKV, "prev-kv", false, "get the previous key-value pair before the event happens")
	fs.BoolVar(&f.progressNotify, "progress-notify", false, "get periodic watch progress notification from server")
}

// options are the watch options of args (key and range end) and f.
func (f *watchFlags) options(args []string) ([]clientv3.OpOption, error) {
	opts, err := keyRangeOptions("watch", args, f.prefix, f.fromKey)
	if err != nil {
		return nil, err
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
	return opts, nil
}

func (a *app) watchCommand() *cobra.Command {
	var f watchFlags
	cmd := &cobra.Command{
		Use:   "watch [options] <key> [range_end] [--] [exec-command arg1 arg2 ...]",
		Short: "Watches events stream on keys or prefixes",
		Long: `Watches events stream on keys or prefixes.

A command after -- runs once for each event, after the response that carries
it is printed, one at a time, with ETCD_WATCH_REVISION (the response's
revision), ETCD_WATCH_KEY, ETCD_WATCH_EVENT_TYPE and ETCD_WATCH_VALUE (each
quoted) in its environment. If it fails, the watch ends with exit code 1.

Without a key on the command line (or on a watch line of -i), the key and
range end are those of ETCDCTL_WATCH_KEY and ETCDCTL_WATCH_RANGE_END.

With --interactive (-i), reads requests from standard input, one a line, and
prints the events of every watch it started as they come:
  watch [--prefix|--from-key] [--rev N] [--prev-kv] [--progress-notify] <key> [range_end] [-- command ...]
  progress    (asks the server for a progress notification on every watch)
--progress-notify given on the command line applies to every watch line.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			args, command, err := splitCommand(args, cmd.ArgsLenAtDash())
			if err != nil {
				return err
			}
			var opts []clientv3.OpOption
			if f.interactive {
				// Checked here: lines without a key take the
				// environment's.
				if _, err := watchKeyFromEnv(args); err != nil {
					return err
				}
				if len(args) > 0 {
					return badArgs("watch --interactive takes no arguments: it reads watch requests from standard input")
				}
			} else {
				if args, err = watchKeyFromEnv(args); err != nil {
					return err
				}
				if len(args) == 0 {
					return badArgs("bad number of arguments") // etcdctl's words
				}
				if opts, err = f.options(args); err != nil {
					return err
				}
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
			if f.interactive {
				return a.watchInteractive(ctx, c, p, f.progressNotify)
			}
			return a.printWatch(ctx, c.Watch(ctx, args[0], opts...), p, nil, command)
		},
	}
	f.define(cmd.Flags())
	cmd.Flags().BoolVarP(&f.interactive, "interactive", "i", false, "interactive mode: read watch and progress requests from standard input")
	return cmd
}

// watchInteractive serves interactive mode: each "watch ..." line of a.in
// starts a watch whose events print as they come, each response whole; each
// "progress" line asks for a progress notification. A line it cannot read
// is reported on errOut and skipped, as etcdctl does; it ends with the input
// (an error, as etcdctl's) or the context.
func (a *app) watchInteractive(ctx context.Context, c *clientv3.Client, p printer, progressNotify bool) error {
	ctx, cancel := context.WithCancel(ctx)
	var (
		printMu sync.Mutex // one response printed at a time
		wg      sync.WaitGroup
	)
	defer wg.Wait() // after cancel: the watches end with ctx
	defer cancel()
	lines := make(chan string)
	readErr := make(chan error, 1)
	failed := make(chan error, 1)
	go func() {
		// Reading cannot be interrupted; this goroutine ends with the
		// input, and never blocks on lines once ctx ended.
		r := bufio.NewReader(a.in)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				readErr <- err
				return
			}
			select {
			case lines <- strings.TrimSuffix(l, "\n"):
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var l string
		select {
		case <-ctx.Done():
			return nil
		case err := <-readErr:
			return withCode(exitInvalidInput, fmt.Errorf("error reading watch request line: %w", err))
		case err := <-failed:
			return err
		case l = <-lines:
		}
		words, err := splitArgs(l)
		if err != nil || len(words) == 0 {
			fmt.Fprintf(a.errOut, "Invalid command: %s (watch and progress supported)\n", l)
			continue
		}
		switch words[0] {
		case "watch":
			var f watchFlags
			fs := pflag.NewFlagSet("watch", pflag.ContinueOnError)
			fs.SetOutput(io.Discard)
			f.define(fs)
			var (
				opts    []clientv3.OpOption
				command []string
			)
			err := fs.Parse(words[1:])
			args := fs.Args()
			if err == nil {
				// etcdctl ends here too, where the other
				// errors of a line only skip it.
				if args, command, err = splitCommand(args, fs.ArgsLenAtDash()); err != nil {
					return err
				}
				if args, err = watchKeyFromEnv(args); err != nil {
					return err
				}
				f.progressNotify = f.progressNotify || progressNotify
				opts, err = f.options(args)
			}
			if err != nil {
				fmt.Fprintf(a.errOut, "Invalid command %s (%v)\n", l, err)
				continue
			}
			wch := c.Watch(ctx, args[0], opts...)
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := a.printWatch(ctx, wch, p, &printMu, command)
				var ce *codedError
				if errors.As(err, &ce) && ce.reported {
					// A command failed: the whole watch
					// ends, as etcdctl's does.
					select {
					case failed <- err:
					default:
					}
					return
				}
				if err != nil {
					fmt.Fprintf(a.errOut, "%v\n", err)
				}
			}()
		case "progress":
			if err := c.RequestProgress(ctx); err != nil {
				return err
			}
		default:
			fmt.Fprintf(a.errOut, "Invalid command %s (only support watch)\n", l)
		}
	}
}

// splitCommand splits a watch's arguments at dash, the position of "--"
// among them (-1: none), into its key and range end and the command to run
// for each event, refusing a "--" with no command after it, as etcdctl does.
func splitCommand(args []string, dash int) (keyArgs, command []string, err error) {
	if dash < 0 {
		return args, nil, nil
	}
	if dash == len(args) {
		return nil, nil, badArgs("bad number of arguments (found separator --, but no commands)")
	}
	return args[:dash], args[dash:], nil
}

// printWatch prints each response of wch as etcdctl does, holding mu (when
// not nil: several watches of interactive mode print to one output) while
// it prints a response and runs command (if not empty) for each of its
// events, until the watch ends: canceled by the server (an error, e.g. a
// compacted revision), by the command's context (no error), or by a failed
// run of command.
func (a *app) printWatch(ctx context.Context, wch clientv3.WatchChan, p printer, mu *sync.Mutex, command []string) error {
	for resp := range wch {
		if mu != nil {
			mu.Lock()
		}
		err := a.printWatchResponse(resp, p)
		for _, ev := range resp.Events {
			if err != nil || len(command) == 0 {
				break
			}
			err = a.runForEvent(ctx, command, resp.Header.Revision, ev)
		}
		if mu != nil {
			mu.Unlock()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// runForEvent runs command for one event, as etcdctl's watch does: the event
// in its environment, its output the command's.
func (a *app) runForEvent(ctx context.Context, command []string, rev int64, ev *clientv3.Event) error {
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("ETCD_WATCH_REVISION=%d", rev),
		fmt.Sprintf("ETCD_WATCH_KEY=%q", ev.Kv.Key),
		fmt.Sprintf("ETCD_WATCH_EVENT_TYPE=%q", ev.Type.String()),
		fmt.Sprintf("ETCD_WATCH_VALUE=%q", ev.Kv.Value),
	)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, a.out, a.errOut
	if err := cmd.Run(); err != nil {
		// etcdctl's words, and no "Error:" before them.
		fmt.Fprintf(a.errOut, "command %q error (%v)\n", command, err)
		return &codedError{code: exitError, err: err, reported: true}
	}
	return nil
}

// printWatchLocked is printWatch, holding mu (when not nil) while it prints
// a response: several watches of interactive mode print to one output.
func (a *app) printWatchLocked(wch clientv3.WatchChan, p printer, mu *sync.Mutex) error {
	for resp := range wch {
		if mu != nil {
			mu.Lock()
		}
		err := a.printWatchResponse(resp, p)
		if mu != nil {
			mu.Unlock()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// printWatchResponse prints one watch response.
func (a *app) printWatchResponse(resp clientv3.WatchResponse, p printer) error {
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
	return nil
}
