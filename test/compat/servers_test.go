package compat

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	readyTimeout = 30 * time.Second
	stopGrace    = 5 * time.Second
)

// server is one side of a comparison: a KV client on its own connection,
// and the ids its response headers must carry for the whole run.
type server struct {
	name string
	addr string // host:port of the client URL
	kv   pb.KVClient

	// clusterID and memberID are learnt from the first response header (for
	// a cluster they are set beforehand: the cluster's id and the id of the
	// member the client talks to) and must not change afterwards, restarts
	// included (see checkHeader).
	clusterID, memberID uint64

	// restart stops the server and starts it again on the same data dir and
	// ports; the connection above reconnects by itself. For a cluster it
	// restarts every member (see startCluster).
	restart func(t testing.TB)

	// checkRole, set for a member of a cluster, logs whether the member
	// is still a follower, as the comparison means it to be.
	checkRole func(t testing.TB)
}

// topology is how the target is deployed.
type topology int

const (
	// oneMember: the target is a single member.
	oneMember topology = iota
	// threeMembers: the target is a 3-member cluster, and the comparison
	// talks to a follower (startCluster).
	threeMembers
)

// pair is the reference etcd and the target under test, both fresh.
type pair struct {
	ref, tgt *server
}

// startPair starts a fresh reference etcd (always a single member: etcd
// answers KV requests the same on one member or three, but for the ids and
// terms that normalise covers, which COMPAT_SELFTEST=1 shows against a
// 3-member etcd) and a fresh target deployed as topo; both are stopped and
// their data removed when t ends.
func startPair(t testing.TB, topo topology) *pair {
	t.Helper()
	ref := startEmbedded(t, "etcd")
	var tgt *server
	switch {
	case topo == threeMembers && selftest:
		tgt = startCluster(t, "etcd-selftest", "")
	case topo == threeMembers:
		tgt = startCluster(t, "plinth", targetBin)
	case selftest:
		tgt = startEmbedded(t, "etcd-selftest")
	default:
		tgt = startBinary(t, "plinth", targetBin)
	}
	return &pair{ref: ref, tgt: tgt}
}

// freeURL returns an http URL on a loopback port nothing listened on a
// moment ago, below the kernel's ephemeral range. Servers here restart on
// their ports; a port inside the range can be taken while one is down, as
// the local port of a client redialing it (even connected to itself), and
// the restart then fails with "address already in use". This is
// internal/testmember's FreeAddr, which this module cannot import.
func freeURL(t testing.TB) url.URL {
	t.Helper()
	low := 32768 // Linux's default start of the ephemeral range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 10000+1000 {
				low = n
			}
		}
	}
	for range 1000 {
		port := 10000 + rand.IntN(low-10000)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if !claimPort(t, port) {
			continue
		}
		if l, err := net.Listen("tcp", addr); err == nil {
			_ = l.Close()
			return url.URL{Scheme: "http", Host: addr}
		}
	}
	t.Fatalf("compat: no free port between 10000 and %d", low)
	return url.URL{}
}

// handedOut holds every port freeURL returned in this process: a port is
// free only until its server binds it, and tests start servers in parallel,
// so without this two of them could be handed the same one.
var handedOut sync.Map

// claimPort claims port for the test t, unless this process or another
// claimed it already: it holds a lock on a file named after the port, in the
// directory where plinth's own test processes claim theirs
// (testmember.PortLockDir), until the test ends.
func claimPort(t testing.TB, port int) bool {
	if _, taken := handedOut.LoadOrStore(port, true); taken {
		return false
	}
	const lockDir = "/tmp/plinth-test-ports"
	if err := os.MkdirAll(lockDir, 0o777); err != nil {
		return true
	}
	f, err := os.OpenFile(filepath.Join(lockDir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		return false
	}
	t.Cleanup(func() {
		_ = os.Remove(f.Name())
		_ = f.Close()
	})
	return true
}

// startEmbedded starts an etcd v3.7.3 member inside the test process; tune,
// if given, changes its configuration before it starts.
func startEmbedded(t testing.TB, name string, tune ...func(*embed.Config)) *server {
	t.Helper()
	dir := t.TempDir()
	client, peer := freeURL(t), freeURL(t)
	cfg := embed.NewConfig()
	cfg.Name = "default"
	cfg.Dir = filepath.Join(dir, "data")
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = "default=" + peer.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(embeddedLogger(t, filepath.Join(dir, "etcd.log")))
	// Durability is not what these tests compare; fsync only slows them.
	cfg.UnsafeNoFsync = true
	// A single member elects itself after an election timeout: keep it short.
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	for _, f := range tune {
		f(cfg)
	}

	var e *embed.Etcd
	launch := func(t testing.TB) {
		var err error
		if e, err = embed.StartEtcd(cfg); err != nil {
			t.Fatalf("compat: starting embedded %s: %v", name, err)
		}
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			t.Fatalf("compat: embedded %s failed: %v", name, err)
		case <-time.After(readyTimeout):
			t.Fatalf("compat: embedded %s not ready after %v", name, readyTimeout)
		}
	}
	stop := func() {
		if e != nil {
			e.Close()
			e = nil
		}
	}
	launch(t)
	t.Cleanup(stop) // after t.TempDir, so it runs before the directory is removed
	s := dial(t, name, client.Host)
	s.restart = func(t testing.TB) {
		stop()
		launch(t)
		waitReady(t, s, nil, "")
	}
	waitReady(t, s, nil, "")
	return s
}

// embeddedLogger logs warnings and worse to path, and also to stderr what
// ends the process (etcd logs a broken invariant at fatal level, which exits
// the whole test binary: without this, the test output would not say why).
func embeddedLogger(t testing.TB, path string) *zap.Logger {
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("compat: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	toFile := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(f), zapcore.WarnLevel)
	toStderr := zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.Lock(os.Stderr), zapcore.DPanicLevel)
	return zap.New(zapcore.NewTee(toFile, toStderr), zap.AddCaller())
}

// startBinary starts the target as a separate process with etcd's flags and
// waits until it answers a Get. It is stopped by pid when t ends: SIGTERM,
// then SIGKILL after stopGrace.
func startBinary(t testing.TB, name, bin string, extraArgs ...string) *server {
	t.Helper()
	dir := t.TempDir()
	client, peer := freeURL(t), freeURL(t)
	p := newProcess(t, name, bin, dir, append([]string{
		"--name", "default",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client.String(),
		"--advertise-client-urls", client.String(),
		"--listen-peer-urls", peer.String(),
		"--initial-advertise-peer-urls", peer.String(),
		"--initial-cluster", "default=" + peer.String(),
	}, extraArgs...)...,
	)
	p.start(t)
	s := dial(t, name, client.Host)
	s.restart = func(t testing.TB) {
		p.stop(t)
		p.start(t)
		waitReady(t, s, p.exited, p.logPath)
	}
	waitReady(t, s, p.exited, p.logPath)
	return s
}

// process is the target binary run as a child process, with its output in a
// log file in its directory. It keeps its flags across restarts.
type process struct {
	name, bin string
	args      []string
	logPath   string
	logf      *os.File
	proc      *os.Process
	exited    chan struct{} // closed when the current (or last) process exits
}

// newProcess prepares a process of bin logging to dir/name.log. When t
// ends it is stopped by pid, and, if t failed, the end of its log is logged.
// Call it after creating dir with t.TempDir, so that the process is stopped
// before the directory is removed.
func newProcess(t testing.TB, name, bin, dir string, args ...string) *process {
	t.Helper()
	p := &process{name: name, bin: bin, args: args, logPath: filepath.Join(dir, name+".log")}
	var err error
	if p.logf, err = os.Create(p.logPath); err != nil {
		t.Fatalf("compat: %v", err)
	}
	t.Cleanup(func() {
		p.stop(t)
		p.logf.Close()
		if t.Failed() {
			t.Logf("compat: last lines of %s's log:\n%s", name, tail(p.logPath, 40))
		}
	})
	return p
}

// start starts the process; it does not wait for it to serve.
func (p *process) start(t testing.TB) {
	t.Helper()
	if p.proc != nil {
		fmt.Fprintf(p.logf, "--- compat: restarted ---\n")
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = p.logf, p.logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("compat: starting %s: %v", p.bin, err)
	}
	p.proc, p.exited = cmd.Process, make(chan struct{})
	done := p.exited
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
}

// stop stops the process by pid, if it runs: SIGTERM, then SIGKILL after
// stopGrace. It returns once the process has exited.
func (p *process) stop(t testing.TB) {
	if p.proc != nil {
		stopProcess(t, p.proc, p.exited)
	}
}

func stopProcess(t testing.TB, p *os.Process, exited <-chan struct{}) {
	select {
	case <-exited:
		return
	default:
	}
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return
	case <-time.After(stopGrace):
	}
	t.Logf("compat: pid %d ignored SIGTERM for %v; killing it", p.Pid, stopGrace)
	_ = p.Kill()
	<-exited
}

// fastReconnect retries quickly while a just-started server is not yet
// listening (gRPC's default first backoff is a second).
var fastReconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: 5 * time.Second,
}

// dial opens a gRPC connection that lets messages of any size through in
// both directions, so that the server, not the client, enforces limits.
func dial(t testing.TB, name, hostport string) *server {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+hostport,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(fastReconnect),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(math.MaxInt32),
			grpc.MaxCallSendMsgSize(math.MaxInt32),
		),
	)
	if err != nil {
		t.Fatalf("compat: dialing %s at %s: %v", name, hostport, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &server{name: name, addr: hostport, kv: pb.NewKVClient(conn)}
}

// waitReady polls a linearizable Get through the etcd client (so the client
// is shown to work against the server) until it succeeds. A non-nil exited
// channel is the process's; its closing ends the wait early.
func waitReady(t testing.TB, s *server, exited <-chan struct{}, logPath string) {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.addr},
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(fastReconnect)},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("compat: etcd client for %s: %v", s.name, err)
	}
	defer cli.Close()
	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "compat/ready-probe")
		cancel()
		if err == nil {
			return
		}
		lastErr = err
		select {
		case <-exited:
			t.Fatalf("compat: %s exited before it was ready; its log:\n%s", s.name, tail(logPath, 40))
		case <-time.After(50 * time.Millisecond):
		}
	}
	msg := fmt.Sprintf("compat: %s not ready after %v: last error: %v", s.name, readyTimeout, lastErr)
	if logPath != "" {
		msg += "\n" + tail(logPath, 40)
	}
	t.Fatal(msg)
}

// tail returns the last n lines of a file, for failure messages.
func tail(path string, n int) string {
	if path == "" {
		return ""
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
