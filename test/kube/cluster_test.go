package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The plinth cluster most tests of the package talk to: started once by
// TestMain, stopped by pid when the tests end. Tests share it and keep apart
// by giving each store a key prefix of its own (see newPrefix). Compaction
// is the one state that a prefix does not separate: tests that compact, or
// watch from revision 1, get a cluster of their own (newCluster).
var (
	endpoints   []string
	plinthBin   string
	clusterSize int
)

// progressInterval is the --watch-progress-notify-interval of the clusters
// of tests that wait for periodic progress notifications: short, as in
// Kubernetes' own watch tests. Other clusters keep the default (10 minutes),
// as Kubernetes' tests do: there, only a progress request (RequestProgress)
// answered brings a watch cache up to date with writes it does not cache,
// so the consistent read tests fail if plinth leaves one unanswered.
const progressInterval = time.Second

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	size := 3
	if s := os.Getenv("KUBE_MEMBERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "kube: KUBE_MEMBERS=%q: want a positive number\n", s)
			return 2
		}
		size = n
	}
	dir, err := os.MkdirTemp("", "plinth-kube-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube: %v\n", err)
		return 2
	}
	defer os.RemoveAll(dir)
	bin := os.Getenv("KUBE_PLINTH_BIN")
	if bin == "" {
		if bin, err = buildPlinth(dir); err != nil {
			fmt.Fprintf(os.Stderr, "kube: %v\n", err)
			return 2
		}
	}
	c, err := startCluster(bin, dir, size, 0)
	if c != nil {
		defer c.stop()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube: %v\n", err)
		if c != nil {
			c.dumpLogs()
		}
		return 2
	}
	endpoints, plinthBin, clusterSize = c.clientAddrs, bin, size
	code := m.Run()
	if code != 0 {
		c.dumpLogs()
	}
	return code
}

// newCluster starts a cluster of its own for t, stopped when t ends, and
// returns its client addresses. A progress interval of 0 keeps plinth's
// default.
func newCluster(t testing.TB, progress time.Duration) []string {
	t.Helper()
	dir := t.TempDir()
	c, err := startCluster(plinthBin, dir, clusterSize, progress)
	if c != nil {
		t.Cleanup(c.stop) // after t.TempDir: stopped before the directory is removed
	}
	if err != nil {
		if c != nil {
			c.dumpLogs()
		}
		t.Fatalf("kube: %v", err)
	}
	return c.clientAddrs
}

// buildPlinth builds ./cmd/plinth of the enclosing repository into dir.
func buildPlinth(dir string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "plinth")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/plinth")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building plinth in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}

// repoRoot walks up from the working directory to the directory whose
// go.mod declares the plinth module itself.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(data), []byte("module github.com/plinthdb/plinth\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod declaring github.com/plinthdb/plinth above the working directory")
		}
		dir = parent
	}
}

// cluster is a set of plinth processes bootstrapped together.
type cluster struct {
	procs       []*exec.Cmd
	exited      []chan struct{}
	logs        []string
	clientAddrs []string
}

func startCluster(bin, dir string, size int, progress time.Duration) (*cluster, error) {
	ports, err := freePorts(2 * size)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := 0; i < size; i++ {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	c := &cluster{}
	for i := 0; i < size; i++ {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		logPath := filepath.Join(dir, fmt.Sprintf("m%d.log", i))
		logf, err := os.Create(logPath)
		if err != nil {
			return c, err
		}
		args := []string{
			"--name", fmt.Sprintf("m%d", i),
			"--data-dir", filepath.Join(dir, fmt.Sprintf("m%d", i)),
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","),
			"--log-level", "warn",
		}
		if progress > 0 {
			args = append(args, "--watch-progress-notify-interval", progress.String())
		}
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			return c, fmt.Errorf("starting %s: %w", bin, err)
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			logf.Close()
			close(exited)
		}()
		c.procs = append(c.procs, cmd)
		c.exited = append(c.exited, exited)
		c.logs = append(c.logs, logPath)
		c.clientAddrs = append(c.clientAddrs, strings.TrimPrefix(client, "http://"))
	}
	return c, c.waitReady(time.Minute)
}

// waitReady waits until a linearizable read succeeds through every member.
func (c *cluster) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, addr := range c.clientAddrs {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = cli.Get(ctx, "kube/ready-probe")
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				cli.Close()
				return fmt.Errorf("member at %s not ready after %v: %w", addr, timeout, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cli.Close()
	}
	return nil
}

// stop stops every member by pid: SIGTERM, then SIGKILL after 10s.
func (c *cluster) stop() {
	for i, cmd := range c.procs {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited[i]:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-c.exited[i]
		}
	}
}

// dumpLogs prints the end of each member's log to stderr.
func (c *cluster) dumpLogs() {
	for _, path := range c.logs {
		data, _ := os.ReadFile(path)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 30 {
			lines = lines[len(lines)-30:]
		}
		fmt.Fprintf(os.Stderr, "kube: last lines of %s:\n%s\n", path, strings.Join(lines, "\n"))
	}
}

// freePorts reserves n distinct free loopback ports.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
