package crash

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// member is one plinth member run as a child process, restarted on the same
// data directory and ports after each kill.
type member struct {
	t         *testing.T
	dataDir   string
	logDir    string
	clientURL string
	peerURL   string
	starts    int
	cmd       *exec.Cmd
	waitErr   chan error // receives the result of cmd.Wait once
	logPath   string     // the log of the current (or last) process
}

// newMember picks free ports and a data directory. Every process it starts is
// killed and reaped in t.Cleanup.
func newMember(t *testing.T) *member {
	t.Helper()
	dir := t.TempDir()
	m := &member{
		t:         t,
		dataDir:   filepath.Join(dir, "data"),
		logDir:    dir,
		clientURL: "http://" + freeAddr(t),
		peerURL:   "http://" + freeAddr(t),
	}
	t.Cleanup(func() {
		_ = m.kill()
		if t.Failed() {
			m.dumpLog(40)
		}
	})
	return m
}

// freeAddr returns a 127.0.0.1 address with a port nothing listened on a
// moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pick a free port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("pick a free port: %v", err)
	}
	return addr
}

// start starts the member and waits until it answers a linearizable read.
func (m *member) start(ctx context.Context) error {
	if m.cmd != nil {
		return errors.New("member already running")
	}
	m.starts++
	m.logPath = filepath.Join(m.logDir, fmt.Sprintf("plinth-%02d.log", m.starts))
	logf, err := os.Create(m.logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(plinthBin,
		"--name", "default",
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.clientURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", "default="+m.peerURL,
	)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("start plinth: %w", err)
	}
	m.cmd = cmd
	m.waitErr = make(chan error, 1)
	go func() {
		err := cmd.Wait()
		_ = logf.Close()
		m.waitErr <- err
	}()
	return m.waitReady(ctx)
}

func (m *member) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cli, err := m.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(rctx, "crash/ready")
		rcancel()
		if err == nil {
			return nil
		}
		select {
		case werr := <-m.waitErr:
			m.waitErr <- werr
			return fmt.Errorf("plinth exited while starting (%v); log %s", werr, m.logPath)
		case <-ctx.Done():
			return fmt.Errorf("plinth not ready after 30s: %v; log %s", err, m.logPath)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// client returns a new client of the member. The caller closes it.
func (m *member) client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{m.clientURL},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// kill sends SIGKILL to the running process, if any, and reaps it. It
// returns an error if the process had already exited by itself.
func (m *member) kill() error {
	if m.cmd == nil {
		return nil
	}
	defer func() { m.cmd = nil }()
	select {
	case err := <-m.waitErr:
		return fmt.Errorf("plinth exited by itself before the kill: %v; log %s", err, m.logPath)
	default:
	}
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.waitErr
	return nil
}

// dumpLog logs the last n lines of the newest process log.
func (m *member) dumpLog(n int) {
	if m.logPath == "" {
		return
	}
	f, err := os.Open(m.logPath)
	if err != nil {
		m.t.Logf("read plinth log: %v", err)
		return
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	m.t.Logf("last lines of %s:\n%s", m.logPath, strings.Join(lines, "\n"))
}
