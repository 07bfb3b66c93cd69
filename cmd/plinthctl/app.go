package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// app is one run of plinthctl: its streams and the global flags. Commands are
// closures over it, so a test can run many commands in one process.
type app struct {
	in     io.Reader
	out    *outWriter
	errOut io.Writer

	endpoints      []string
	dialTimeout    time.Duration
	commandTimeout time.Duration
	writeOut       string
	hex            bool
}

// run executes plinthctl with args (without the program name) and returns the
// exit code. Errors are printed to errOut as "Error: <message>".
func run(ctx context.Context, args []string, in io.Reader, out, errOut io.Writer) int {
	a := &app{in: in, out: &outWriter{w: out}, errOut: errOut}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errOut)
	err := root.ExecuteContext(ctx)
	if err == nil && a.out.err != nil {
		err = withCode(exitIO, fmt.Errorf("write output: %w", a.out.err))
	}
	if err != nil {
		var ce *codedError
		if !errors.As(err, &ce) || !ce.reported {
			fmt.Fprintf(errOut, "Error: %v\n", err)
		}
		return exitCode(err)
	}
	return exitOK
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "plinthctl",
		Short: "A command-line client for plinth (and any etcd v3 server)",
		Long: `A command-line client for plinth (and any etcd v3 server).

Each global flag may also be set by an environment variable, as with etcdctl:
ETCDCTL_ and the flag's name in capitals, "-" as "_" (ETCDCTL_ENDPOINTS,
ETCDCTL_DIAL_TIMEOUT, ETCDCTL_COMMAND_TIMEOUT, ETCDCTL_WRITE_OUT, ETCDCTL_HEX).
A flag given both ways is an error.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		return flagsFromEnv(cmd.Root().PersistentFlags())
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withCode(exitError, fmt.Errorf("%w (see '%s --help')", err, c.CommandPath()))
	})
	pf := root.PersistentFlags()
	pf.StringSliceVar(&a.endpoints, "endpoints", []string{"127.0.0.1:2379"}, "gRPC endpoints, comma-separated")
	pf.DurationVar(&a.dialTimeout, "dial-timeout", 2*time.Second, "dial timeout for client connections")
	pf.DurationVar(&a.commandTimeout, "command-timeout", 5*time.Second, "timeout for short running commands (excluding dial timeout)")
	pf.StringVarP(&a.writeOut, "write-out", "w", "simple", "output format: simple, json, table or fields")
	pf.BoolVar(&a.hex, "hex", false, "print byte strings as hex encoded strings")

	root.AddCommand(
		a.getCommand(),
		a.putCommand(),
		a.delCommand(),
		a.txnCommand(),
		a.compactionCommand(),
		a.leaseCommand(),
		a.watchCommand(),
		a.lockCommand(),
		a.electCommand(),
		a.endpointCommand(),
		a.memberCommand(),
		a.moveLeaderCommand(),
		a.snapshotCommand(),
		a.alarmCommand(),
		a.versionCommand(),
	)
	return root
}

// client dials the endpoints. The caller closes it.
func (a *app) client() (*clientv3.Client, error) {
	return a.clientOf(a.endpoints)
}

// clientOf dials the given endpoints with the flags' settings.
func (a *app) clientOf(endpoints []string) (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: a.dialTimeout,
		// The client's own log lines (retries, balancer) would interleave
		// with the output; errors reach the user through return values.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, withCode(exitBadConnection, fmt.Errorf("connect to %v: %w", endpoints, err))
	}
	return c, nil
}

// withClient dials, runs f with a context bounded by --command-timeout, and
// closes the client.
func (a *app) withClient(cmd *cobra.Command, f func(ctx context.Context, c *clientv3.Client) error) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), a.commandTimeout)
	defer cancel()
	return f(ctx, c)
}

// printer is the printer for --write-out.
func (a *app) printer() (printer, error) {
	switch a.writeOut {
	case "simple":
		return &simplePrinter{w: a.out, errOut: a.errOut, hex: a.hex}, nil
	case "json":
		return &jsonPrinter{w: a.out, hex: a.hex}, nil
	case "fields":
		return &fieldsPrinter{w: a.out, hex: a.hex}, nil
	case "table":
		return &tablePrinter{w: a.out, hex: a.hex}, nil
	default:
		return nil, badFeature("unsupported output format %q (simple, json, table, fields)", a.writeOut)
	}
}

// outWriter keeps the first write error so that printers need not check every
// line; run turns it into exit code 6.
type outWriter struct {
	w   io.Writer
	err error
}

func (o *outWriter) Write(p []byte) (int, error) {
	if o.err != nil {
		return 0, o.err
	}
	n, err := o.w.Write(p)
	if err != nil {
		o.err = err
	}
	return n, err
}
