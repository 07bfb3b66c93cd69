package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/plinthdb/plinth/bench/internal/benchout"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// WatchLoad is the tool's watch load: watchers watchers over streams streams
// (the tool's --streams and --watch-per-stream), spread evenly over keys keys,
// then puts puts to those keys in turn, as fast as they go; the load ends when
// every watcher got every event of its key. Requests per second are events
// delivered per second, and Total (what CPU per request divides by) is the events
// delivered: puts*watchers/keys.
func WatchLoad(puts, watchers, streams, keys int) Load {
	streams = min(streams, watchers)
	perStream := watchers / streams
	watchers = perStream * streams
	return Load{Name: "watch", Watch: true, Total: puts * watchers / keys, Args: []string{"watch",
		"--streams=" + strconv.Itoa(streams),
		"--watch-per-stream=" + strconv.Itoa(perStream),
		"--watched-key-total=" + strconv.Itoa(keys),
		"--key-space-size=" + strconv.Itoa(keys),
		"--sequential-keys",
		"--put-total=" + strconv.Itoa(puts),
	}}
}

// WatchLatencyLoad is the tool's watch-latency load: watchers watchers of one key
// over streams streams, and puts puts to that key at rate puts per second; the
// latency reported is from each put's answer to each watcher's event. Total is
// the events delivered: puts*watchers.
func WatchLatencyLoad(puts, rate, watchers, streams int) Load {
	streams = min(streams, watchers)
	perStream := watchers / streams
	watchers = perStream * streams
	return Load{Name: "watch-latency", Watch: true, Total: puts * watchers, Args: []string{"watch-latency",
		"--streams=" + strconv.Itoa(streams),
		"--watchers-per-stream=" + strconv.Itoa(perStream),
		"--put-total=" + strconv.Itoa(puts),
		"--put-rate=" + strconv.Itoa(rate),
	}}
}

// IdleWatchLoad holds watchers idle watchers, each on a key of its own, over
// streams gRPC Watch streams spread over the members (not with the tool, which
// puts as soon as its watchers exist): once every watcher is created, and after
// settle, it reads the resident memory of every member. Total is the watchers
// created, so that requests per second are creations per second.
func IdleWatchLoad(watchers, streams int, settle time.Duration) Load {
	streams = max(1, min(streams, watchers))
	return Load{Name: "watch-idle", Watch: true, Total: watchers,
		Args: []string{fmt.Sprintf("(no tool: %d idle watchers over %d streams, RSS read %v after)", watchers, streams, settle)},
		run: func(ctx context.Context, c *Cluster, res *Result) error {
			return holdIdleWatchers(ctx, c, watchers, streams, settle, res)
		},
	}
}

// holdIdleWatchers creates the watchers of IdleWatchLoad through conns of its
// own (one per member, streams taken in turn), waits until each is created, then
// settle, and fills in res the creations as a report and the members' resident
// memory.
func holdIdleWatchers(ctx context.Context, c *Cluster, watchers, streams int, settle time.Duration, res *Result) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the streams: the watchers live until the RSS is read
	var conns []*grpc.ClientConn
	for _, ep := range c.Endpoints() {
		conn, err := grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("harness: idle watchers: %w", err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	start := time.Now()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for s := range streams {
		n := watchers / streams
		if s < watchers%streams {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := createIdle(ctx, conns[s%len(conns)], s, n)
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if firstErr != nil {
		return firstErr
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settle):
	}
	res.Report = benchout.Report{Total: took, RPS: float64(watchers) / took.Seconds(), Percentiles: map[float64]time.Duration{}, Errors: map[string]int{}}
	rss, err := c.residentBytes()
	res.ResidentBytes = rss
	return err
}

// createIdle opens stream number s on conn and creates n watchers on it, each
// on a key of its own, and returns once the server said each was created. The
// stream stays open, the watchers idle, until ctx ends.
func createIdle(ctx context.Context, conn *grpc.ClientConn, s, n int) error {
	stream, err := pb.NewWatchClient(conn).Watch(ctx)
	if err != nil {
		return fmt.Errorf("harness: idle watch stream %d: %w", s, err)
	}
	sendErr := make(chan error, 1)
	go func() {
		for i := range n {
			key := fmt.Appendf(nil, "idle/%05d/%07d", s, i)
			req := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: key}}}
			if err := stream.Send(req); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	for created := 0; created < n; {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("harness: idle watch stream %d, %d of %d created: %w", s, created, n, err)
		}
		if resp.Canceled {
			return fmt.Errorf("harness: idle watch stream %d: a create was refused: %s", s, resp.CancelReason)
		}
		if resp.Created {
			created++
		}
	}
	if err := <-sendErr; err != nil {
		return fmt.Errorf("harness: idle watch stream %d: %w", s, err)
	}
	// The stream stays open, unread (no key it watches changes), until
	// ctx ends.
	return nil
}

// residentBytes returns each member's resident memory (VmRSS), in member
// order.
func (c *Cluster) residentBytes() ([]int64, error) {
	out := make([]int64, len(c.Members))
	for i, s := range c.Members {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.Pid()))
		if err != nil {
			return nil, fmt.Errorf("harness: %s member %s: %w", c.Spec.Name, s.Name, err)
		}
		rss, err := vmRSS(b)
		if err != nil {
			return nil, fmt.Errorf("harness: %s member %s: %w", c.Spec.Name, s.Name, err)
		}
		out[i] = rss
	}
	return out, nil
}

// vmRSS reads the VmRSS line ("VmRSS:	  123456 kB") of /proc/PID/status.
func vmRSS(status []byte) (int64, error) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("VmRSS line %q", bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS line %q: %w", bytes.TrimSpace(line), err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no VmRSS line in /proc/PID/status")
}
