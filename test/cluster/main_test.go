package cluster

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// plinthBin is the plinth binary built by TestMain, or named by
// CLUSTER_TARGET_BIN.
var plinthBin string

var (
	durationFlag = flag.Duration("cluster.duration", 15*time.Second, "how long TestLinearizableUnderFaults and TestLeasesUnderLeaderFaults inject faults")
	seedFlag     = flag.Int64("cluster.seed", 0, "seed of the fault and load choices (0: pick one from the clock and log it)")
	snapshotFlag = flag.Uint64("cluster.snapshot-count", 10000, "--snapshot-count of every member")
	// breakFlag weakens the tests on purpose, to show that their checks
	// catch what they claim to (each such run is expected to FAIL):
	//   serializable: the reads the tests take as linearizable are sent
	//                 serializable, so a lagging or deposed member answers
	//                 them from its own, possibly stale, state;
	//   nowait:       a restarted member is read before it caught up (its
	//                 restart does not wait for a linearizable read, and
	//                 the final checks do not wait for its revision);
	//                 a restarted member catches up within milliseconds,
	//                 so this seldom fails: isolate does;
	//   isolate:      as nowait, and the other members are paused while a
	//                 member restarts, so it cannot catch up at all (only
	//                 TestReplicateAndElect can run so);
	//   nopartition:  the partition tests and faults cut nobody off, so
	//                 the member they take as isolated keeps serving, and
	//                 a cluster taken as split with no quorum anywhere
	//                 keeps answering;
	//   nosnapshot:   the snapshot and join tests write less than the log
	//                 keeps, so the lagging member catches up from the log;
	//   nopromote:    TestMembershipUnderLoad leaves its learner a learner;
	//   nofence:      TestLockFencingUnderFaults writes without comparing
	//                 the fencing token, so stale holders' writes succeed.
	breakFlag = flag.String("cluster.break", "", "weaken the tests on purpose: serializable, nowait, isolate, nopartition, nosnapshot, nopromote or nofence (expect failures)")
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	switch *breakFlag {
	case "", "serializable", "nowait", "isolate", "nopartition", "nosnapshot", "nopromote", "nofence":
	default:
		fmt.Fprintf(os.Stderr, "cluster: -cluster.break=%q: want serializable, nowait, isolate, nopartition, nosnapshot, nopromote or nofence\n", *breakFlag)
		return 2
	}
	if bin := os.Getenv("CLUSTER_TARGET_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			fmt.Fprintf(os.Stderr, "cluster: CLUSTER_TARGET_BIN: %v\n", err)
			return 2
		}
		plinthBin = bin
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "plinth-cluster-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		return 2
	}
	defer os.RemoveAll(dir)
	if plinthBin, err = testmember.Build(dir); err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		return 2
	}
	return m.Run()
}

// The timing every member runs with: etcd's defaults.
const (
	heartbeat       = 100 * time.Millisecond
	electionTimeout = 1000 * time.Millisecond
)

// memberFlags are the flags of every member of the tests' clusters.
func memberFlags() []string {
	return []string{
		"--heartbeat-interval", strconv.Itoa(int(heartbeat.Milliseconds())),
		"--election-timeout", strconv.Itoa(int(electionTimeout.Milliseconds())),
		"--snapshot-count", strconv.FormatUint(*snapshotFlag, 10),
		"--watch-progress-notify-interval", watchProgressInterval.String(),
	}
}

// startCluster starts a new cluster of n members and waits until each serves.
func startCluster(t *testing.T, n int) *testmember.Cluster {
	t.Helper()
	c := testmember.NewCluster(t, plinthBin, n, memberFlags()...)
	start := time.Now()
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d members serving in %v", n, time.Since(start).Round(time.Millisecond))
	return c
}

// restart starts a killed or stopped member of c again and waits until it
// answers a linearizable read (see breakFlag for the exceptions).
func restart(ctx context.Context, c *testmember.Cluster, m *testmember.Member) error {
	switch *breakFlag {
	case "nowait":
		return m.Launch()
	case "isolate":
		for _, o := range c.Live() {
			if err := o.Pause(); err != nil {
				return err
			}
		}
		if err := m.Launch(); err != nil {
			return err
		}
		time.Sleep(time.Second)
		return nil
	}
	return m.Start(ctx)
}

// client returns a client of the given endpoints, closed when the test ends.
func client(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// linearizable is the option of a read the test takes as linearizable: none,
// unless -cluster.break=serializable.
func linearizable() []clientv3.OpOption {
	if *breakFlag == "serializable" {
		return []clientv3.OpOption{clientv3.WithSerializable()}
	}
	return nil
}

// rawGet reads key linearizably (but for -cluster.break=serializable) from the
// member at endpoint with a bare gRPC client. The etcd client retries a
// range that failed with Unavailable ("request timed out", "leader changed")
// until its own deadline, against etcd as against plinth; the bare client
// shows what the member answered.
func rawGet(ctx context.Context, t *testing.T, endpoint, key string) (*pb.RangeResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return pb.NewKVClient(conn).Range(ctx, &pb.RangeRequest{Key: []byte(key), Serializable: *breakFlag == "serializable"})
}

// ackedWrite is a write some client was told succeeded: key holds value at
// revision rev.
type ackedWrite struct {
	key, value string
	rev        int64
}

// checkAcked reads every acknowledged write back from every member at its
// revision with serializable reads, once the member caught up with the newest
// of them, and returns the violations.
func checkAcked(ctx context.Context, c *testmember.Cluster, writes []ackedWrite) []string {
	var maxRev int64
	for _, w := range writes {
		maxRev = max(maxRev, w.rev)
	}
	var (
		mu   sync.Mutex
		errs []string
	)
	errorf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, fmt.Sprintf(format, args...))
	}
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cli, err := m.Client()
			if err != nil {
				errorf("%s: %v", m.Name(), err)
				return
			}
			defer cli.Close()
			if *breakFlag != "nowait" && *breakFlag != "isolate" {
				if err := waitRevision(ctx, cli, maxRev); err != nil {
					errorf("%s: %v", m.Name(), err)
					return
				}
			}
			next := make(chan ackedWrite)
			var rg sync.WaitGroup
			for range 8 {
				rg.Add(1)
				go func() {
					defer rg.Done()
					for w := range next {
						rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
						resp, err := cli.Get(rctx, w.key, clientv3.WithRev(w.rev), clientv3.WithSerializable())
						cancel()
						switch {
						case err != nil:
							errorf("%s: get %s at revision %d: %v", m.Name(), w.key, w.rev, err)
						case len(resp.Kvs) != 1:
							errorf("LOST on %s: %s=%q acknowledged at revision %d; at that revision the member has %d keys", m.Name(), w.key, w.value, w.rev, len(resp.Kvs))
						case string(resp.Kvs[0].Value) != w.value || resp.Kvs[0].ModRevision != w.rev:
							errorf("on %s: %s=%q acknowledged at revision %d; at that revision the member has %q (mod revision %d)", m.Name(), w.key, w.value, w.rev, resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
						}
					}
				}()
			}
			for _, w := range writes {
				next <- w
			}
			close(next)
			rg.Wait()
		}()
	}
	wg.Wait()
	return errs
}

// waitRevision waits, for 20s at most, until a serializable read of the
// member behind cli answers at revision rev or later: it applied every write
// up to rev.
func waitRevision(ctx context.Context, cli *clientv3.Client, rev int64) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var last int64
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		resp, err := cli.Get(rctx, "cluster/none", clientv3.WithSerializable())
		rcancel()
		if err == nil {
			if last = resp.Header.Revision; last >= rev {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not caught up after 20s: at revision %d, want %d (last error %v)", last, rev, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// report fails the test with the first of errs.
func report(t *testing.T, what string, errs []string) {
	t.Helper()
	if len(errs) == 0 {
		return
	}
	const show = 30
	more := ""
	if len(errs) > show {
		more = fmt.Sprintf("\n... and %d more", len(errs)-show)
		errs = errs[:show]
	}
	t.Fatalf("%s: %d violations:\n%s%s", what, len(errs), strings.Join(errs, "\n"), more)
}
