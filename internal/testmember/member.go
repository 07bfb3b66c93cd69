// Package testmember runs plinth members as child processes for tests: it
// builds cmd/plinth, starts a member (New) or a cluster of members
// (NewCluster) on free loopback ports with their data in temp dirs, waits
// until they serve, and stops them gracefully, kills, pauses and resumes them
// by pid. Every process a Member starts is stopped and reaped when its test
// ends, a paused one resumed first. When a test fails, the end of each
// member's newest log is logged, and with PLINTH_TEST_LOGS=dir every log of
// every member is kept in dir.
//
// A Member and a Cluster are used by one goroutine at a time: a test that
// injects faults from a goroutine of its own lets that goroutine alone drive
// them, and stops it before the test ends.
//
// Tests that need the real process (its flags, its exit, a kill -9) use it; tests
// of the server's behaviour use internal/server in-process instead.
package testmember

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Build builds cmd/plinth into dir and returns the binary's path. Tests run
// inside the plinth module, so the import path names the plinth under test.
// The binary is built without -race even when the test is: the test checks the
// server, and -race on the test checks the test.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "plinth")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/plinthdb/plinth/cmd/plinth").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build plinth: %w\n%s", err, out)
	}
	return bin, nil
}

// Binary returns the server binary a test package runs: the file named by the
// environment variable env when it is set (another plinth, or a server that
// takes etcd's flags, such as the reference etcd), else cmd/plinth built into
// a new temp dir. Call cleanup when the tests are done: it removes that dir.
func Binary(env string) (bin string, cleanup func(), err error) {
	if bin := os.Getenv(env); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", nil, fmt.Errorf("testmember: %s: %w", env, err)
		}
		return bin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "plinth-test-bin-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	if bin, err = Build(dir); err != nil {
		cleanup()
		return "", nil, err
	}
	return bin, cleanup, nil
}

// stopTimeout is how long Stop waits after SIGTERM before it kills.
const stopTimeout = 10 * time.Second

// Member is one plinth member run as a child process. It keeps its data
// directory and ports across restarts.
type Member struct {
	t         testing.TB
	bin       string
	name      string
	args      []string // the flags of every start: identity, URLs, then the caller's
	dataDir   string
	logDir    string
	clientURL string
	peerURL   string
	netns     string // the network namespace the process runs in, "" for the test's own
	starts    int
	cmd       *exec.Cmd
	paused    bool       // the process was sent SIGSTOP and not yet SIGCONT
	exited    chan error // receives the result of cmd.Wait once
	logPath   string     // the log of the current (or last) process
}

// New prepares a single-member cluster of the binary bin: a member named
// "default" with free ports and a data directory. args are added to the flags
// of every start. When the test ends, a running process gets SIGTERM (the
// test fails if it does not stop within 10s), and if the test failed, the end
// of the newest process log is logged.
func New(t testing.TB, bin string, args ...string) *Member {
	t.Helper()
	clientURL, peerURL := "http://"+FreeAddr(t), "http://"+FreeAddr(t)
	return newMember(t, bin, "default", clientURL, peerURL, []string{
		"--initial-cluster", "default=" + peerURL,
	}, args)
}

// newMember prepares a member named name on the given URLs. Its flags are its
// identity and URLs, then clusterArgs, then args.
func newMember(t testing.TB, bin, name, clientURL, peerURL string, clusterArgs, args []string) *Member {
	t.Helper()
	dir := t.TempDir()
	m := &Member{
		t:         t,
		bin:       bin,
		name:      name,
		dataDir:   filepath.Join(dir, "data"),
		logDir:    dir,
		clientURL: clientURL,
		peerURL:   peerURL,
	}
	m.args = append([]string{
		"--name", name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", clientURL,
		"--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
	}, clusterArgs...)
	m.args = append(m.args, args...)
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			m.LogTail(40)
			m.keepLogs()
		}
	})
	return m
}

// keepLogs copies every process log of the member into
// $PLINTH_TEST_LOGS/<test>/<member>/, when that variable names a directory:
// the temp dir that holds them is removed when the test ends.
func (m *Member) keepLogs() {
	root := os.Getenv("PLINTH_TEST_LOGS")
	if root == "" {
		return
	}
	dst := filepath.Join(root, strings.ReplaceAll(m.t.Name(), "/", "_"), m.name)
	logs, _ := filepath.Glob(filepath.Join(m.logDir, "plinth-*.log"))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		m.t.Logf("keep logs: %v", err)
		return
	}
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, filepath.Base(l)), b, 0o644)
		}
		if err != nil {
			m.t.Logf("keep logs: %v", err)
			return
		}
	}
	m.t.Logf("logs of %s kept in %s", m.name, dst)
}

// exitErr returns an error if the running process has exited by itself.
func (m *Member) exitErr() error {
	if m.cmd == nil {
		return nil
	}
	return m.exitedBefore("a request")
}

// FreeAddr returns a 127.0.0.1 address with a port nothing listened on a
// moment ago, below the kernel's ephemeral range. A port inside that range
// can be taken, while a member is down between a kill and its restart, as
// the local port of an outgoing connection (a client redialing the stopped
// member can even connect to itself), and the restart then fails with
// "address already in use". Ports below the range are never handed out so.
func FreeAddr(t testing.TB) string {
	t.Helper()
	low := ephemeralLow()
	for range 1000 {
		port := 10000 + rand.IntN(low-10000)
		if !claimPort(t, port) {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if l, err := net.Listen("tcp", addr); err == nil {
			_ = l.Close()
			return addr
		}
	}
	t.Fatalf("no free port between 10000 and %d", low)
	return ""
}

// handedOut holds every port FreeAddr returned in this process: a port is
// free only until its member binds it, and a test picks a cluster's ports
// before it starts any member, so without this two members could be handed
// the same one.
var handedOut sync.Map

// PortLockDir is where test processes claim ports, machine-wide: go test
// runs packages in parallel processes, each picking ports from the same
// range. A test claims a port by holding a lock on a file named after it
// until the test ends; another process skips a port whose file is locked. The
// compat suite (its own module) claims ports in the same directory.
const PortLockDir = "/tmp/plinth-test-ports"

// claimPort claims port for the test t, unless this process or another
// claimed it already.
func claimPort(t testing.TB, port int) bool {
	if _, taken := handedOut.LoadOrStore(port, true); taken {
		return false
	}
	if err := os.MkdirAll(PortLockDir, 0o777); err != nil {
		return true // no lock dir: this process's own claims still hold
	}
	f, err := os.OpenFile(filepath.Join(PortLockDir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return false // another process holds it
	}
	// The lock is held until the test that asked ends (its members are
	// stopped by then: their cleanups run first).
	t.Cleanup(func() {
		_ = os.Remove(f.Name())
		_ = f.Close()
	})
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 10000+1000 {
				low = n
			}
		}
	}
	return low
}

// Endpoint is the member's client address, host:port.
func (m *Member) Endpoint() string { return strings.TrimPrefix(m.clientURL, "http://") }

// Name is the member's --name.
func (m *Member) Name() string { return m.name }

// PeerURL is the member's peer URL, http://host:port.
func (m *Member) PeerURL() string { return m.peerURL }

// DataDir is the member's data directory, kept across restarts.
func (m *Member) DataDir() string { return m.dataDir }

// Running reports whether the member's process was started and not yet
// stopped or killed by the harness (a paused process is running).
func (m *Member) Running() bool { return m.cmd != nil }

// Paused reports whether the member's process is stopped by SIGSTOP.
func (m *Member) Paused() bool { return m.paused }

// Pid is the process id of the running process, 0 when none runs.
func (m *Member) Pid() int {
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// LogPath is the log of the current process, or of the last one.
func (m *Member) LogPath() string { return m.logPath }

// Start starts the member and waits until it answers a linearizable read,
// for 30s at most. A member of a cluster answers one only once a quorum of
// its cluster runs: start its peers too (Cluster.Start does). Start after
// Kill or Stop restarts the member on the same data directory and flags.
func (m *Member) Start(ctx context.Context) error {
	if err := m.Launch(); err != nil {
		return err
	}
	return m.WaitReady(ctx)
}

// Restart stops the running process, if any, with SIGTERM (see Stop), and
// starts the member again on the same data directory and flags (see Start).
func (m *Member) Restart(ctx context.Context) error {
	if err := m.Stop(); err != nil {
		return err
	}
	return m.Start(ctx)
}

// Launch starts the member's process and returns without waiting for it to
// serve (see WaitReady).
func (m *Member) Launch() error {
	if m.cmd != nil {
		return errors.New("testmember: member already running")
	}
	m.starts++
	m.logPath = filepath.Join(m.logDir, fmt.Sprintf("plinth-%02d.log", m.starts))
	logf, err := os.Create(m.logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.bin, m.args...)
	if m.netns != "" {
		// ip netns exec enters the namespace and execs plinth in place: the
		// pid stays plinth's, for Pause, Kill and Stop.
		cmd = exec.Command("ip", append([]string{"netns", "exec", m.netns, m.bin}, m.args...)...)
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("testmember: start plinth: %w", err)
	}
	m.cmd = cmd
	m.exited = make(chan error, 1)
	go func() {
		err := cmd.Wait()
		_ = logf.Close()
		m.exited <- err
	}()
	return nil
}

// WaitReady waits until the launched member answers a linearizable read (a
// serializable one if it is a learner), for 30s at most, and fails at once if
// its process exits.
func (m *Member) WaitReady(ctx context.Context) error {
	if m.cmd == nil {
		return errors.New("testmember: member not running")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cli, err := m.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(rctx, "testmember/ready")
		if err != nil && rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(rpctypes.ErrGRPCNotSupportedForLearner) {
			// A learner serves only serializable reads.
			_, err = cli.Get(rctx, "testmember/ready", clientv3.WithSerializable())
		}
		rcancel()
		if err == nil {
			return nil
		}
		select {
		case werr := <-m.exited:
			m.exited <- werr
			return fmt.Errorf("plinth %s exited while starting (%v); log %s", m.name, werr, m.logPath)
		case <-ctx.Done():
			return fmt.Errorf("plinth %s not ready after 30s: %v; log %s", m.name, err, m.logPath)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Client returns a new client of the member. The caller closes it.
func (m *Member) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{m.clientURL},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// Kill sends SIGKILL to the running process, if any, and reaps it. It returns
// an error if the process had already exited by itself.
func (m *Member) Kill() error { return m.end(syscall.SIGKILL) }

// Pause stops the running process with SIGSTOP: it keeps its sockets and
// state but answers nothing, to peers or clients, until Resume. Stop and Kill
// resume a paused process first.
func (m *Member) Pause() error {
	if m.cmd == nil {
		return errors.New("testmember: pause: member not running")
	}
	if m.paused {
		return nil
	}
	if err := m.exitedBefore("SIGSTOP"); err != nil {
		return err
	}
	if err := m.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("testmember: pause %s (pid %d): %w", m.name, m.cmd.Process.Pid, err)
	}
	m.paused = true
	// The signal is delivered asynchronously: a thread running on another
	// core can still answer a request for a moment. Wait until the
	// kernel reports the process stopped.
	return waitStopped(m.cmd.Process.Pid)
}

// waitStopped waits until /proc says every thread of process pid is stopped
// (state T), for 5s at most.
func waitStopped(pid int) error {
	deadline := time.Now().Add(5 * time.Second)
	for !allStopped(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("testmember: pid %d not stopped 5s after SIGSTOP", pid)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

func allStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		// The state follows the command name, which is in parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// Resume continues a paused process with SIGCONT.
func (m *Member) Resume() error {
	if m.cmd == nil || !m.paused {
		return nil
	}
	m.paused = false
	if err := m.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("testmember: resume %s (pid %d): %w", m.name, m.cmd.Process.Pid, err)
	}
	return nil
}

// Stop sends SIGTERM to the running process, if any, and reaps it. If the
// process does not exit within 10s it is killed, and Stop returns an error, as
// it does when the process had already exited by itself.
func (m *Member) Stop() error { return m.end(syscall.SIGTERM) }

func (m *Member) end(sig syscall.Signal) error {
	if m.cmd == nil {
		return nil
	}
	defer func() { m.cmd = nil }()
	if err := m.exitedBefore(sig.String()); err != nil {
		return err
	}
	// A stopped process would hold SIGTERM pending forever: continue it
	// first (SIGKILL needs no SIGCONT, but it does no harm).
	if m.paused {
		m.paused = false
		_ = m.cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = m.cmd.Process.Signal(sig)
	select {
	case <-m.exited:
		return nil
	case <-time.After(stopTimeout):
		_ = m.cmd.Process.Kill()
		<-m.exited
		return fmt.Errorf("plinth %s (pid %d) did not exit within %v of %v; killed it; log %s", m.name, m.cmd.Process.Pid, stopTimeout, sig, m.logPath)
	}
}

// exitedBefore returns an error if the process has exited by itself, before
// the caller could send it sig.
func (m *Member) exitedBefore(sig string) error {
	select {
	case err := <-m.exited:
		m.exited <- err
		return fmt.Errorf("plinth %s exited by itself before it was sent %s: %v; log %s", m.name, sig, err, m.logPath)
	default:
		return nil
	}
}

// LogTail logs the last n lines of the newest process log.
func (m *Member) LogTail(n int) {
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

// WaitExit waits until the running process exits by itself, for as long as
// ctx allows, and returns how it exited: nil for exit status 0, else the
// *exec.ExitError. The member is then not running. WaitExit is for a process
// expected to stop on its own (a member removed from its cluster); an error
// of ctx is returned as is, and the process keeps running.
func (m *Member) WaitExit(ctx context.Context) error {
	if m.cmd == nil {
		return errors.New("testmember: member not running")
	}
	select {
	case err := <-m.exited:
		m.cmd, m.paused = nil, false
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Log returns the text of the current (or last) process's log.
func (m *Member) Log() (string, error) {
	if m.logPath == "" {
		return "", errors.New("testmember: member never started")
	}
	b, err := os.ReadFile(m.logPath)
	return string(b), err
}
