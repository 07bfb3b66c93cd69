package cluster

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/plinthdb/plinth/internal/testmember"
	"github.com/plinthdb/plinth/internal/testnet"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The shape of TestLinearizableUnderFaults.
const (
	linKeys = 6
	// Client i < linClients is pinned to member i % members; one more
	// client is over every member's endpoint.
	linClients = 6
	// linPace spaces a client's ops, so that the history stays small enough
	// for porcupine however long the run.
	linPace        = 5 * time.Millisecond
	linOpTimeout   = 2 * time.Second
	linCheckBudget = 2 * time.Minute
)

var membersFlag = flag.Int("cluster.members", 3, "members of TestLinearizableUnderFaults's cluster (1 tries the harness on a single member)")

// linHistory records the ops of the linearizability test.
type linHistory struct {
	epoch time.Time
	mu    sync.Mutex // guards the fields below
	ops   []porcupine.Operation
	acked []ackedWrite
	// counts of ops by kind and outcome, for the log
	okOps, unknownOps, failedReads [3]int
}

func (h *linHistory) now() int64 { return time.Since(h.epoch).Nanoseconds() }

// record adds an op that was called at call. err nil: it returned out now.
// A failed read tells nothing and is left out; a failed write may take
// effect at any time after its call, so it returns at the end of time.
func (h *linHistory) record(clientID int, in kvInput, call int64, out kvOutput, answeredBy uint64, err error) {
	ret := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		if in.kind == kvGet {
			h.failedReads[in.kind]++
			return
		}
		h.unknownOps[in.kind]++
		out = kvOutput{unknown: true}
		ret = math.MaxInt64
	} else {
		h.okOps[in.kind]++
		if in.kind == kvPut || (in.kind == kvCAS && out.ok) {
			h.acked = append(h.acked, ackedWrite{key: in.key, value: in.value, rev: out.rev})
		}
	}
	op := porcupine.Operation{ClientId: clientID, Input: in, Call: call, Output: out, Return: ret}
	if answeredBy != 0 {
		op.Metadata = fmt.Sprintf("member %x", answeredBy)
	}
	h.ops = append(h.ops, op)
}

// do issues one op through cli and records it.
func (h *linHistory) do(ctx context.Context, cli *clientv3.Client, clientID int, in kvInput) (kvOutput, error) {
	call := h.now()
	octx, cancel := context.WithTimeout(ctx, linOpTimeout)
	defer cancel()
	var out kvOutput
	var err error
	var answeredBy uint64
	switch in.kind {
	case kvPut:
		var resp *clientv3.PutResponse
		if resp, err = cli.Put(octx, in.key, in.value); err == nil {
			out.rev, answeredBy = resp.Header.Revision, resp.Header.MemberId
		}
	case kvGet:
		var resp *clientv3.GetResponse
		if resp, err = cli.Get(octx, in.key, linearizable()...); err == nil {
			out.rev, answeredBy = resp.Header.Revision, resp.Header.MemberId
			switch len(resp.Kvs) {
			case 0:
			case 1:
				out.value = string(resp.Kvs[0].Value)
			default:
				err = fmt.Errorf("get %s answered %d keys", in.key, len(resp.Kvs))
			}
		}
	case kvCAS:
		var resp *clientv3.TxnResponse
		resp, err = cli.Txn(octx).
			If(clientv3.Compare(clientv3.Value(in.key), "=", in.expect)).
			Then(clientv3.OpPut(in.key, in.value)).
			Commit()
		if err == nil {
			out.ok, out.rev, answeredBy = resp.Succeeded, resp.Header.Revision, resp.Header.MemberId
		}
	}
	h.record(clientID, in, call, out, answeredBy, err)
	return out, err
}

func linKey(k int) string { return fmt.Sprintf("lin/%d", k) }

// TestLinearizableUnderFaults runs clients pinned to different members, and
// one over all of them, each issuing puts, linearizable gets and
// compare-and-set txns on a few shared keys, while a nemesis (see nemesis)
// kills -9 and pauses (SIGSTOP) members and leaders, takes the quorum away
// by pausing or killing a majority, partitions the network (isolates the
// leader, a follower, or every member), and replaces members: removes one,
// wipes it and adds it back as a fresh member. Ops without an answer are
// recorded with an unknown outcome. At the end, porcupine must find the
// history linearizable, no op may have been answered while no quorum
// existed, and every acknowledged write must be readable from every member
// then in the cluster. Meanwhile watchers through every member follow a
// load of their own, and must get it whole and in order (see faultWatch).
//
// The members run in network namespaces (testnet) when the test can make
// them, and on loopback without the partition faults otherwise; the log
// says which. It runs for -cluster.duration, and at least until each fault
// ran once (make test-faults runs it longer).
func TestLinearizableUnderFaults(t *testing.T) {
	ctx := t.Context()
	seed := pickSeed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 2))
	c, nw := startFaultCluster(t, *membersFlag)
	h := &linHistory{epoch: time.Now()}

	// Every key starts with a value, so that compares have one to hold.
	init := client(t, c.Endpoints()...)
	for k := range linKeys {
		if _, err := h.do(ctx, init, 0, kvInput{kind: kvPut, key: linKey(k), value: fmt.Sprintf("init.%d", k)}); err != nil {
			t.Fatal(err)
		}
	}

	// Watchers of another load through every member, checked at the end.
	fw := startFaultWatch(t, c, seed)

	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var idMu sync.Mutex
	nextID := linClients + 2
	newID := func() int {
		idMu.Lock()
		defer idMu.Unlock()
		nextID++
		return nextID - 1
	}
	for i := range linClients + 1 {
		// A replaced member's successor has its endpoint: the clients
		// pinned to it reach the successor.
		eps := c.Endpoints()
		if i < linClients {
			eps = eps[i%len(eps) : i%len(eps)+1]
		}
		cli := client(t, eps...)
		crng := rand.New(rand.NewPCG(uint64(seed), uint64(100+i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := i + 1
			seen := map[string]string{} // the newest value this client knows of a key
			for n := 0; lctx.Err() == nil; n++ {
				key := linKey(crng.IntN(linKeys))
				in := kvInput{kind: kvGet, key: key}
				switch r := crng.IntN(100); {
				case r < 25 && seen[key] != "":
					in = kvInput{kind: kvCAS, key: key, expect: seen[key], value: fmt.Sprintf("c%d.%d", i, n)}
				case r < 55:
					in = kvInput{kind: kvPut, key: key, value: fmt.Sprintf("c%d.%d", i, n)}
				}
				out, err := h.do(lctx, cli, id, in)
				switch {
				case err != nil:
					delete(seen, key)
					if in.kind != kvGet {
						// The op stays open to the end of time: give
						// this client's next ops a lane of their own
						// in the visualization.
						id = newID()
					}
					select {
					case <-lctx.Done():
					case <-time.After(100 * time.Millisecond):
					}
				case in.kind == kvGet:
					seen[key] = out.value
				case in.kind == kvPut || out.ok:
					seen[key] = in.value
				default:
					delete(seen, key)
				}
				time.Sleep(linPace)
			}
		}()
	}

	nm := &nemesis{t: t, c: c, nw: nw, h: h, rng: rng}
	faults := nm.run(*durationFlag)
	stopLoad()
	wg.Wait()

	// Every member back and serving; then a last linearizable read of each
	// key through each member joins the history.
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Members {
		cli := client(t, m.Endpoint())
		for k := range linKeys {
			if _, err := h.do(ctx, cli, 0, kvInput{kind: kvGet, key: linKey(k)}); err != nil {
				t.Errorf("final read of %s through %s: %v", linKey(k), m.Name(), err)
			}
		}
	}
	t.Logf("%d faults; ops answered: %d puts, %d gets, %d cas; unknown outcome: %d puts, %d cas; %d failed gets",
		faults, h.okOps[kvPut], h.okOps[kvGet], h.okOps[kvCAS], h.unknownOps[kvPut], h.unknownOps[kvCAS], h.failedReads[kvGet])
	noQuorumErrs, noQuorumUnknown := checkNoQuorum(h, nm.noQuorum)
	t.Logf("%d times without a quorum: %d writes issued then have an unknown outcome, %d ops were answered", len(nm.noQuorum), noQuorumUnknown, len(noQuorumErrs))
	if len(noQuorumErrs) > 0 {
		t.Errorf("ops answered while no quorum existed: %d:\n%s", len(noQuorumErrs), strings.Join(noQuorumErrs[:min(len(noQuorumErrs), 30)], "\n"))
	}

	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(kvModel, h.ops, linCheckBudget)
	t.Logf("porcupine: %v on %d ops in %v", res, len(h.ops), time.Since(checkStart).Round(time.Millisecond))
	switch res {
	case porcupine.Illegal:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("plinth-cluster-%d.html", time.Now().UnixNano()))
		if err := porcupine.VisualizePath(kvModel, info, path); err != nil {
			path = fmt.Sprintf("(visualization failed: %v)", err)
		}
		t.Errorf("NOT LINEARIZABLE (seed %d): see %s\n%s", seed, path, describeIllegal(h.ops, info))
	case porcupine.Unknown:
		t.Errorf("linearizability undecided after %v", linCheckBudget)
	}
	report(t, "acknowledged writes", checkAcked(ctx, c, h.acked))
	fw.check(ctx, t, c)
}

// startFaultCluster starts the cluster of TestLinearizableUnderFaults: its
// members each in a network namespace of its own when the test can make
// them, so that the nemesis can partition them, and on loopback otherwise
// (nw is then nil).
func startFaultCluster(t *testing.T, n int) (c *testmember.Cluster, nw *testnet.Network) {
	t.Helper()
	nw, err := testnet.Open(t, n)
	if err != nil {
		if !errors.Is(err, testnet.ErrUnavailable) {
			t.Fatal(err)
		}
		t.Logf("members on loopback, WITHOUT partition faults: %v", err)
		return startCluster(t, n), nil
	}
	t.Logf("members in network namespaces: partition faults on")
	return startOn(t, nw), nw
}
