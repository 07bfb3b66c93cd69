package compat

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestPlinthctlWatchLikeEtcdctl runs etcdctl v3.7.3 watch and plinthctl watch
// side by side against the target, for the same events, and requires the same
// output from both in each output format (simple, json, fields, with and
// without --hex), for history and live events, prev_kv, ranges, transactions
// and deletes, with a command run for each event, and in interactive mode
// (-i) with a progress request.
func TestPlinthctlWatchLikeEtcdctl(t *testing.T) {
	ctl := buildEtcdctl(t)
	pctl := buildPlinthctl(t)
	var s *server
	if selftest {
		s = startEmbedded(t, "etcd-selftest")
	} else {
		s = startBinary(t, "plinth", targetBin)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	write := func() {
		t.Helper()
		lease, err := cli.Grant(ctx, 600)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range []clientv3.Op{
			clientv3.OpPut("w/a", "1"),
			clientv3.OpPut("w/b", "two words", clientv3.WithLease(lease.ID)),
			clientv3.OpPut("w/a", "line\nbreak \x01\xff"),
			clientv3.OpDelete("w/b"),
		} {
			if _, err := cli.Do(ctx, op); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cli.Txn(ctx).Then(clientv3.OpPut("w/c", "3"), clientv3.OpDelete("w/a"), clientv3.OpPut("w/d", "3")).Commit(); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, "w/a", "4"); err != nil {
			t.Fatal(err)
		}
	}
	write()
	resp, err := cli.Get(ctx, "w/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	first := resp.Header.Revision - 5 // the first put of write
	rev := fmt.Sprint(first)

	type watchCase struct {
		args    []string
		failing bool // etcdctl ends with an error, which plinthctl must print alike
	}
	var cases []watchCase
	for _, args := range [][]string{
		{"watch", "--prefix", "--rev", rev, "w/"},
		{"watch", "--prefix", "--rev", rev, "--prev-kv", "w/"},
		{"watch", "--rev", rev, "w/a", "w/c"},
	} {
		for _, format := range [][]string{{"-w", "simple"}, {"-w", "json"}, {"-w", "fields"}, {"-w", "simple", "--hex"}, {"-w", "fields", "--hex"}} {
			cases = append(cases, watchCase{args: append(append([]string(nil), format...), args...)})
		}
	}
	// A command run for each event (etcdctl's watch -- exec-command): its
	// environment, its output after the response's, and a failing one ending
	// the watch with etcdctl's message.
	cases = append(cases,
		watchCase{args: []string{"watch", "--prefix", "--rev", rev, "w/", "--", "sh", "-c", "echo $ETCD_WATCH_REVISION $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE"}},
		watchCase{args: []string{"-w", "json", "watch", "--rev", rev, "w/a", "--", "sh", "-c", "exit 3"}, failing: true},
		watchCase{args: []string{"watch", "w/a", "--"}, failing: true},
	)
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var ref, got string
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); ref = watchOutput(t, ctl, s, c.args, nil, nil, "") }()
			go func() { defer wg.Done(); got = watchOutput(t, pctl, s, c.args, nil, nil, "") }()
			wg.Wait()
			if ref == "" || (!c.failing && strings.Contains(ref, "Error")) {
				t.Fatalf("etcdctl %s printed:\n%s", strings.Join(c.args, " "), ref)
			}
			if ref != got {
				t.Errorf("etcdctl %s:\n%s\nplinthctl:\n%s", strings.Join(c.args, " "), ref, got)
			}
		})
	}

	// Live events, and interactive mode with a progress request: both
	// tools watch at once, then the same writes happen again.
	t.Run("interactive and live", func(t *testing.T) {
		// One watch each: two watches of one etcdctl print in any order.
		lines := []string{"watch --prefix --prev-kv w/", "progress"}
		var wg sync.WaitGroup
		outs := make([]string, 2)
		started := make(chan struct{}, 2)
		for i, bin := range []string{ctl, pctl} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs[i] = watchOutput(t, bin, s, []string{"watch", "-i"}, lines, started, "w/a\n4\n")
			}()
		}
		<-started
		<-started
		time.Sleep(time.Second) // both have sent their lines: the watches exist
		write()
		wg.Wait()
		if outs[0] == "" || !strings.Contains(outs[0], "progress notify") {
			t.Fatalf("etcdctl watch -i printed:\n%s", outs[0])
		}
		if outs[0] != outs[1] {
			t.Errorf("etcdctl watch -i:\n%s\nplinthctl watch -i:\n%s", outs[0], outs[1])
		}
	})
}

// watchOutput runs the watch command args of a ctl (etcdctl or plinthctl)
// against s, writing lines to its standard input when there are some, until
// its output has stopped growing for a second (or 20 s passed), then kills
// it and returns what it printed on standard output and error. started, when
// not nil, is told once the lines are written; until, when not "", must be
// in the output before it counts as complete.
func watchOutput(t *testing.T, bin string, s *server, args, lines []string, started chan<- struct{}, until string) string {
	cmd := exec.Command(bin, append([]string{"--endpoints", s.addr}, args...)...)
	var out lockedText
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Error(err)
		return ""
	}
	if err := cmd.Start(); err != nil {
		t.Error(err)
		return ""
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	for _, l := range lines {
		if _, err := io.WriteString(stdin, l+"\n"); err != nil {
			t.Error(err)
		}
		time.Sleep(200 * time.Millisecond) // a line at a time, as typed
	}
	if started != nil {
		started <- struct{}{}
	}
	deadline := time.Now().Add(20 * time.Second)
	last, since := "", time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		if cur := out.String(); cur != last {
			last, since = cur, time.Now()
		} else if cur != "" && strings.Contains(cur, until) && time.Since(since) > time.Second {
			break
		}
	}
	return out.String()
}

// lockedText is an output a process writes while the test reads it.
type lockedText struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedText) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedText) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
