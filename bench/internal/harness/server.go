// Package harness runs one benchmark round: it starts a server, one process or a
// cluster of member processes, on fresh data directories and free loopback ports,
// waits until every member answers a Get, runs the etcd benchmark tool against all
// of them, and reads the members' own CPU time from /proc before and after the load,
// so that a round yields requests per second, latency and server CPU per request
// (the sum over the members).
//
// Every process it starts it stops again by pid (SIGTERM, then SIGKILL), and every
// directory it makes it removes. It never talks to an address outside 127.0.0.1.
package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/plinthdb/plinth/bench/internal/proccpu"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ReadyTimeout bounds how long Start waits for a server to answer a Get.
const ReadyTimeout = 30 * time.Second

// StopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopGrace = 10 * time.Second

// Member is what one member's command line is made of.
type Member struct {
	Name       string // "default" for a server alone, m1, m2, ... in a cluster
	DataDir    string
	ClientPort int // serves clients on 127.0.0.1:ClientPort
	PeerPort   int // and peers on 127.0.0.1:PeerPort, if it has peers
	// InitialCluster is every member's name=http://127.0.0.1:PeerPort, comma-separated,
	// in member order (etcd's --initial-cluster).
	InitialCluster string
}

// Spec says how to start one kind of server.
type Spec struct {
	Name string // short name for tables: "plinth", "etcd", "floor"
	Bin  string // path of the executable
	// Args returns the command line (without the executable) of one member.
	Args func(m Member) []string
	// Single marks a server that is always one process, whatever the cluster size
	// asked for (the floor, which has no peers).
	Single bool
}

// ClusterToken is the --initial-cluster-token of every cluster the harness starts.
const ClusterToken = "plinth-bench"

// EtcdArgs returns the command line of an etcd member of a new cluster. plinth accepts
// the same command line unchanged. quotaBackendBytes is passed on when it is positive.
func EtcdArgs(quotaBackendBytes int64) func(Member) []string {
	return func(m Member) []string {
		client := fmt.Sprintf("http://127.0.0.1:%d", m.ClientPort)
		peer := fmt.Sprintf("http://127.0.0.1:%d", m.PeerPort)
		args := []string{
			"--name", m.Name,
			"--data-dir", m.DataDir,
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--initial-cluster", m.InitialCluster,
			"--initial-cluster-state", "new",
			"--initial-cluster-token", ClusterToken,
			"--log-level", "error",
		}
		if quotaBackendBytes > 0 {
			args = append(args, "--quota-backend-bytes", strconv.FormatInt(quotaBackendBytes, 10))
		}
		return args
	}
}

// FloorArgs returns the command line of the floor server (bench/cmd/floor), whose
// Range answers carry a value of valueSize bytes.
func FloorArgs(valueSize int) func(Member) []string {
	return func(m Member) []string {
		return []string{
			"--listen", fmt.Sprintf("127.0.0.1:%d", m.ClientPort),
			"--value-size", strconv.Itoa(valueSize),
		}
	}
}

// Cluster is the running members of one server: one process, or several that are
// peers of each other on loopback. Its directory holds one subdirectory per member.
type Cluster struct {
	Spec    Spec
	Members []*Server
	dir     string // removed by Stop
}

// Server is one running member process.
type Server struct {
	Name     string // member name
	Endpoint string // host:port of its client gRPC endpoint

	dir  string // the member's directory: data and log
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process has exited; waitErr is set then
	// waitErr is the process's exit error, written once before done is closed.
	waitErr  error
	stopOnce sync.Once
}

// Start makes a fresh directory under root (os.TempDir() when root is ""), picks free
// loopback ports, starts members processes of spec (one if spec.Single) as a new
// cluster from an executable read afresh from the disk (see evictFromPageCache), and
// waits until a Get on every member succeeds, which for a cluster means it has a
// leader. On error nothing is left running and the directory is removed.
func Start(ctx context.Context, spec Spec, root string, members int) (*Cluster, error) {
	if members < 1 || spec.Single {
		members = 1
	}
	if err := evictFromPageCache(spec.Bin); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(root, "plinth-bench-"+spec.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	c := &Cluster{Spec: spec, dir: dir}
	ports, err := freePorts(2 * members)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ms := make([]Member, members)
	var initial []string
	for i := range ms {
		ms[i] = Member{Name: "default", ClientPort: ports[2*i], PeerPort: ports[2*i+1]}
		if members > 1 {
			ms[i].Name = fmt.Sprintf("m%d", i+1)
		}
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", ms[i].Name, ms[i].PeerPort))
	}
	// Every member is started before any is waited for: a member of a new cluster
	// answers only once a quorum of its peers is up.
	for i := range ms {
		ms[i].InitialCluster = strings.Join(initial, ",")
		s, err := startMember(spec, filepath.Join(dir, ms[i].Name), ms[i])
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Members = append(c.Members, s)
	}
	if err := c.waitReady(ctx); err != nil {
		tail := c.LogTail(2000)
		c.Stop()
		return nil, fmt.Errorf("harness: %s not ready: %w\n%s", spec.Name, err, tail)
	}
	return c, nil
}

// waitReady waits for every member at once, and gives up on all as soon as one
// fails (a member that exits fails at once), with that member's error.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(c.Members))
	for _, s := range c.Members {
		go func() {
			err := s.waitReady(ctx)
			if err != nil {
				err = fmt.Errorf("member %s: %w", s.Name, err)
			}
			errs <- err // before cancel: the cause comes out of errs first
			if err != nil {
				cancel()
			}
		}()
	}
	var first error
	for range c.Members {
		// The first error is the cause; the others are the cancellation it caused.
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// startMember starts one member process in memberDir (made here), with data in
// memberDir/data and its output in memberDir/server.log.
func startMember(spec Spec, memberDir string, m Member) (*Server, error) {
	if err := os.Mkdir(memberDir, 0o755); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	logf, err := os.Create(filepath.Join(memberDir, "server.log"))
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	m.DataDir = filepath.Join(memberDir, "data")
	s := &Server{
		Name:     m.Name,
		Endpoint: fmt.Sprintf("127.0.0.1:%d", m.ClientPort),
		dir:      memberDir,
		log:      logf,
		done:     make(chan struct{}),
	}
	// Not CommandContext: Stop ends the process, by pid, in the one way we chose.
	s.cmd = exec.Command(spec.Bin, spec.Args(m)...)
	s.cmd.Dir = memberDir
	s.cmd.Stdout = logf
	s.cmd.Stderr = logf
	killWithParent(s.cmd)
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("harness: start %s member %s: %w", spec.Name, m.Name, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

// Endpoints returns every member's client endpoint, in member order.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, s := range c.Members {
		eps = append(eps, s.Endpoint)
	}
	return eps
}

// Client returns a new etcd client of all the members; the caller closes it.
func (c *Cluster) Client() (*clientv3.Client, error) {
	return newClient(c.Endpoints())
}

// exited returns a member whose process has ended, or nil.
func (c *Cluster) exited() *Server {
	for _, s := range c.Members {
		if s.Exited() {
			return s
		}
	}
	return nil
}

// cpuTicks returns each member's utime+stime, in clock ticks, in member order.
func (c *Cluster) cpuTicks() ([]int64, error) {
	ticks := make([]int64, len(c.Members))
	for i, s := range c.Members {
		t, err := proccpu.Ticks(s.Pid())
		if err != nil {
			return nil, fmt.Errorf("harness: %s member %s: %w", c.Spec.Name, s.Name, err)
		}
		ticks[i] = t
	}
	return ticks, nil
}

// Stop stops every member at once (see Server.stop) and removes the cluster's
// directory. It is safe to call more than once.
func (c *Cluster) Stop() error {
	var wg sync.WaitGroup
	for _, s := range c.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.stop()
		}()
	}
	wg.Wait()
	return os.RemoveAll(c.dir)
}

// LogTail returns up to the last n bytes of each member's output, under its name.
func (c *Cluster) LogTail(n int) string {
	var b strings.Builder
	for _, s := range c.Members {
		fmt.Fprintf(&b, "--- %s member %s log (tail) ---\n%s", c.Spec.Name, s.Name, s.LogTail(n))
	}
	return b.String()
}

// Pid returns the server's process id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Exited reports whether the server process has ended.
func (s *Server) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// waitReady polls with an etcd client Get until one succeeds, the process exits, or
// ReadyTimeout passes.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	var last error
	for {
		select {
		case <-s.done:
			return fmt.Errorf("process exited: %v", s.waitErr)
		default:
		}
		last = s.tryGet(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-s.done:
			return fmt.Errorf("process exited: %v", s.waitErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) tryGet(ctx context.Context) error {
	// A plain TCP connect first: the client would wait out its whole dial timeout
	// on a port that is not listening yet.
	conn, err := net.DialTimeout("tcp", s.Endpoint, time.Second)
	if err != nil {
		return err
	}
	conn.Close()
	gctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return s.get(gctx, "plinth-bench-ready")
}

// get makes a linearizable Get of key on this member alone.
func (s *Server) get(ctx context.Context, key string) error {
	cli, err := newClient([]string{s.Endpoint})
	if err != nil {
		return err
	}
	defer cli.Close()
	_, err = cli.Get(ctx, key)
	return err
}

// newClient returns a new etcd client of endpoints; the caller closes it.
func newClient(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: time.Second,
		Logger:      zap.NewNop(),
	})
}

// stop sends SIGTERM, waits up to StopGrace, then sends SIGKILL. It is safe to call
// more than once.
func (s *Server) stop() {
	s.stopOnce.Do(func() {
		if !s.Exited() {
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(StopGrace):
				_ = s.cmd.Process.Kill()
				<-s.done
			}
		}
		s.log.Close()
	})
}

// LogTail returns up to the last n bytes of the server's output.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(filepath.Join(s.dir, "server.log"))
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment ago.
// All n listeners are open at once so the ports differ.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("harness: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
