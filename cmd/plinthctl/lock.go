package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// lockCommand is etcdctl's lock: the client's Mutex recipe (over KV, Lease
// and Watch, so it works against any etcd v3 server) under a session lease
// of --ttl seconds. Without a command it prints the lock's key and holds
// the lock until interrupted; with one it runs the command while it holds
// the lock, with ETCD_LOCK_KEY and ETCD_LOCK_REV in its environment, and
// exits with the command's exit code. The lock's key is deleted when the
// command ends or plinthctl is interrupted; if plinthctl dies, the lease
// ends after --ttl seconds and with it the hold.
func (a *app) lockCommand() *cobra.Command {
	ttl := 10
	cmd := &cobra.Command{
		Use:   "lock <lockname> [exec-command arg1 arg2 ...]",
		Short: "Acquires a named lock",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return badArgs("lock takes a lock name argument and an optional command to execute")
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
			return a.lockUntilDone(cmd.Context(), c, p, ttl, args[0], args[1:])
		},
	}
	cmd.Flags().IntVar(&ttl, "ttl", ttl, "timeout for session")
	return cmd
}

// lockUntilDone takes the lock, then runs cmdArgs or holds the lock until
// ctx ends (an interrupt), and releases it.
func (a *app) lockUntilDone(ctx context.Context, c *clientv3.Client, p printer, ttl int, name string, cmdArgs []string) error {
	s, err := concurrency.NewSession(c, concurrency.WithTTL(ttl))
	if err != nil {
		return err
	}
	m := concurrency.NewMutex(s, name)
	if err := m.Lock(ctx); err != nil {
		return err
	}
	// The release outlives the interrupt that usually asks for it.
	release := func() error { return m.Unlock(context.WithoutCancel(ctx)) }
	if len(cmdArgs) > 0 {
		run := exec.Command(cmdArgs[0], cmdArgs[1:]...)
		run.Env = append([]string{"ETCD_LOCK_KEY=" + m.Key(), fmt.Sprintf("ETCD_LOCK_REV=%d", m.Header().Revision)}, os.Environ()...)
		run.Stdout, run.Stderr = a.out, a.errOut
		runErr := run.Run()
		unlockErr := release()
		var exitErr *exec.ExitError
		if errors.As(runErr, &exitErr) {
			return withCode(exitErr.ExitCode(), runErr)
		}
		if runErr != nil {
			return runErr
		}
		return unlockErr
	}
	resp, err := c.Get(ctx, m.Key())
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		return errors.New("lock lost on init")
	}
	if err := p.get((*pb.RangeResponse)(resp), rangeShape{}); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return release()
	case <-s.Done():
		return errors.New("session expired")
	}
}
