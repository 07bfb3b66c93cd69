// Package harness runs one benchmark round: it starts a server process on a fresh data
// directory and free loopback ports, waits until it answers a Get, runs the etcd
// benchmark tool against it, and reads the server's own CPU time from /proc before and
// after the load, so that a round yields requests per second, latency and server CPU
// per request.
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
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ReadyTimeout bounds how long Start waits for a server to answer a Get.
const ReadyTimeout = 30 * time.Second

// StopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopGrace = 10 * time.Second

// Spec says how to start one kind of server.
type Spec struct {
	Name string // short name for tables: "plinth", "etcd", "floor"
	Bin  string // path of the executable
	// Args returns the command line (without the executable) for a server that keeps
	// its data in dataDir and serves clients on 127.0.0.1:clientPort (and peers on
	// 127.0.0.1:peerPort, if it has peers).
	Args func(dataDir string, clientPort, peerPort int) []string
}

// EtcdArgs returns the command line of a single etcd member. plinth accepts the same
// command line unchanged. quotaBackendBytes is passed on when it is positive.
func EtcdArgs(quotaBackendBytes int64) func(string, int, int) []string {
	return func(dataDir string, clientPort, peerPort int) []string {
		client := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
		peer := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
		args := []string{
			"--name", "default",
			"--data-dir", dataDir,
			"--listen-client-urls", client,
			"--advertise-client-urls", client,
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--initial-cluster", "default=" + peer,
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
func FloorArgs(valueSize int) func(string, int, int) []string {
	return func(_ string, clientPort, _ int) []string {
		return []string{
			"--listen", fmt.Sprintf("127.0.0.1:%d", clientPort),
			"--value-size", strconv.Itoa(valueSize),
		}
	}
}

// Server is a running server process.
type Server struct {
	Spec     Spec
	Endpoint string // host:port of its client gRPC endpoint

	dir  string // temporary directory: data and log; removed by Stop
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process has exited; waitErr is set then
	// waitErr is the process's exit error, written once before done is closed.
	waitErr  error
	stopOnce sync.Once
	stopErr  error
}

// Start makes a fresh directory under root (os.TempDir() when root is ""), picks free
// loopback ports, starts the server and waits until a Get on it succeeds. On error
// nothing is left running and the directory is removed.
func Start(ctx context.Context, spec Spec, root string) (*Server, error) {
	dir, err := os.MkdirTemp(root, "plinth-bench-"+spec.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	ports, err := freePorts(2)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("harness: %w", err)
	}
	s := &Server{
		Spec:     spec,
		Endpoint: fmt.Sprintf("127.0.0.1:%d", ports[0]),
		dir:      dir,
		log:      logf,
		done:     make(chan struct{}),
	}
	// Not CommandContext: Stop ends the process, by pid, in the one way we chose.
	s.cmd = exec.Command(spec.Bin, spec.Args(filepath.Join(dir, "data"), ports[0], ports[1])...)
	s.cmd.Dir = dir
	s.cmd.Stdout = logf
	s.cmd.Stderr = logf
	killWithParent(s.cmd)
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("harness: start %s: %w", spec.Name, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(ctx); err != nil {
		tail := s.LogTail(2000)
		s.Stop()
		return nil, fmt.Errorf("harness: %s not ready: %w\n--- server log (tail) ---\n%s", spec.Name, err, tail)
	}
	return s, nil
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
	cli, err := s.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	gctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err = cli.Get(gctx, "plinth-bench-ready")
	return err
}

// Client returns a new etcd client of the server; the caller closes it.
func (s *Server) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint},
		DialTimeout: time.Second,
		Logger:      zap.NewNop(),
	})
}

// Stop sends SIGTERM, waits up to StopGrace, then sends SIGKILL, and removes the
// server's directory. It is safe to call more than once.
func (s *Server) Stop() error {
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
		s.stopErr = os.RemoveAll(s.dir)
	})
	return s.stopErr
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
