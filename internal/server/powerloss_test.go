package server

// Power loss: members run over Pebble's crashable in-memory file system, and
// at random points "the power goes": the file system is replaced by a copy
// of what had been synced at that moment (vfs.MemFS.CrashClone), the member
// is reopened from it, and the test checks that every write a client saw
// acknowledged before the cut is there at its revision, that nothing was
// applied twice, and that Raft's hard state did not go back. The member's
// old process is cut off from the network at the moment of the cut, so that
// nothing it does afterwards (on a disk that no longer counts) reaches
// anyone.
//
// `go test` runs a short form; -powerloss.duration runs each test for that
// long (make test-powerloss), -powerloss.seed replays a run's choices.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/raftnode"
	"github.com/plinthdb/plinth/internal/storage"
)

var (
	powerlossDuration = flag.Duration("powerloss.duration", 0, "run each power loss test for this long instead of its short form")
	powerlossSeed     = flag.Uint64("powerloss.seed", 0, "seed of the power loss tests' random choices (0: from the clock)")
)

// powerlossRounds is how many power losses a test makes: its short form, or
// as many as fit in -powerloss.duration.
type powerlossRounds struct {
	short    int
	deadline time.Time
	done     int
}

func newPowerlossRounds(short int) *powerlossRounds {
	r := &powerlossRounds{short: short}
	if *powerlossDuration > 0 {
		r.deadline = time.Now().Add(*powerlossDuration)
	}
	return r
}

func (r *powerlossRounds) next() bool {
	r.done++
	if r.deadline.IsZero() {
		return r.done <= r.short
	}
	return r.done <= r.short || time.Now().Before(r.deadline)
}

func powerlossRand(t *testing.T) *rand.Rand {
	seed := *powerlossSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -powerloss.seed=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed))
}

// ackedWrite is a write a client saw succeed: a put of value (or, deleted, a
// delete) of key at revision rev.
type ackedWrite struct {
	key, value string
	rev        int64
	deleted    bool
}

// history records what the clients asked and what they were told.
type history struct {
	mu        sync.Mutex
	sent      map[string]bool // every value ever sent in a put
	acked     []ackedWrite
	compacted int64 // the highest compaction a client saw succeed
	// seenAt is the revision each value was found at by a check: a value
	// found at two revisions was applied twice.
	seenAt map[string]int64
	// checkedRev is the revision up to which the keys' histories were
	// walked by the last check.
	checkedRev int64
}

func newHistory() *history {
	return &history{sent: map[string]bool{}, seenAt: map[string]int64{}}
}

func (h *history) send(values ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, v := range values {
		h.sent[v] = true
	}
}

// ack records writes that run acknowledged, unless its power went before
// they are recorded: the cut takes what was recorded before as certain, and
// an answer from a process that lost power no longer counts.
func (h *history) ack(run *memberRun, ws ...ackedWrite) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if run.off.Load() {
		return
	}
	h.acked = append(h.acked, ws...)
}

func (h *history) ackCompaction(run *memberRun, rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if run.off.Load() {
		return
	}
	h.compacted = max(h.compacted, rev)
}

// certain returns what was acknowledged so far: all of it must survive a
// power loss that comes after this call.
func (h *history) certain() (acked []ackedWrite, compacted int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.acked), h.compacted
}

func (h *history) maxAckedRev() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var rev int64
	for _, w := range h.acked {
		rev = max(rev, w.rev)
	}
	return rev
}

var powerKeys = func() []string {
	keys := make([]string, 12)
	for i := range keys {
		keys[i] = fmt.Sprintf("key/%02d", i)
	}
	return keys
}()

// powerMember is one member and its disk.
type powerMember struct {
	id   uint64
	cfg  Config
	disk *vfs.MemFS
	run  atomic.Pointer[memberRun] // nil while it has no power
	// termAtCut is the term the member had persisted (and so could have
	// told others of) when the power went.
	termAtCut uint64
	// matchAtCut is how far the leader knew the member's log to match
	// its own when the power went: the member had acknowledged those
	// entries, so it must have synced them.
	matchAtCut uint64
	// hardState is the synced hard state the member reopened with last.
	hardState *raftpb.HardState
	// frozen, while set, holds back every sync of the member's disk:
	// from the moment the power goes until its disk was copied, nothing
	// more becomes durable.
	frozen atomic.Pointer[chan struct{}]
}

// fs is the member's file system for a run: its disk, with the syncs slowed
// (see slowSyncs) and frozen when the power goes.
func (m *powerMember) fs() vfs.FS {
	return errorfs.Wrap(m.disk, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			slowSync()
			if ch := m.frozen.Load(); ch != nil {
				<-*ch
			}
		}
		return nil
	}))
}

// memberRun is one process of a member, from its start to its power loss.
type memberRun struct {
	srv *Server
	// off: the power went. The network drops what the process still
	// sends or is sent, and what its clients are told no longer counts.
	off atomic.Bool
	// ctx ends the clients' requests to the process.
	ctx    context.Context
	cancel context.CancelFunc
	conn   *grpc.ClientConn
	kv     pb.KVClient
}

type powerCluster struct {
	t       *testing.T
	rng     *rand.Rand
	rngMu   sync.Mutex
	members []*powerMember
	hist    *history
	// Leader moves and configuration changes churn made.
	moves, confChanges atomic.Int64
}

func newPowerCluster(t *testing.T, n int, token string) *powerCluster {
	t.Helper()
	c := &powerCluster{t: t, rng: powerlossRand(t), hist: newHistory()}
	initial := map[string][]url.URL{}
	peers := make([]url.URL, n)
	for i := range n {
		peers[i] = freeLoopbackURL(t)
		initial[fmt.Sprintf("m%d", i)] = []url.URL{peers[i]}
	}
	for i := range n {
		client := freeLoopbackURL(t)
		m := &powerMember{id: memberID([]url.URL{peers[i]}, token), disk: vfs.NewCrashableMem()}
		m.cfg = Config{
			Name:                fmt.Sprintf("m%d", i),
			DataDir:             fmt.Sprintf("/data/m%d", i),
			ListenClientURLs:    []url.URL{client},
			AdvertiseClientURLs: []url.URL{client},
			ListenPeerURLs:      []url.URL{peers[i]},
			AdvertisePeerURLs:   []url.URL{peers[i]},
			InitialCluster:      initial,
			InitialClusterState: "new",
			InitialClusterToken: token,
			MaxRequestBytes:     1572864,
			HeartbeatInterval:   10 * time.Millisecond,
			ElectionTimeout:     100 * time.Millisecond,
			SnapshotCount:       50,
			Logger:              testLogger(fmt.Sprintf("m%d", i)),
			PeerBlocked:         c.blocked,
		}
		c.members = append(c.members, m)
	}
	t.Cleanup(func() {
		for _, m := range c.members {
			m.stop()
		}
	})
	return c
}

// blocked drops every message from or to a member without power.
func (c *powerCluster) blocked(from, to uint64) bool {
	for _, m := range c.members {
		if r := m.run.Load(); r != nil && r.off.Load() && (m.id == from || m.id == to) {
			return true
		}
	}
	return false
}

func (c *powerCluster) intn(n int) int {
	c.rngMu.Lock()
	defer c.rngMu.Unlock()
	return c.rng.IntN(n)
}

// start opens member i from its disk, checks the hard state it reopens
// with, and serves.
func (c *powerCluster) start(i int) {
	c.t.Helper()
	m := c.members[i]
	cfg := m.cfg
	cfg.FS = m.fs()
	srv, err := New(cfg)
	if err != nil {
		c.t.Fatalf("member %d: reopen after power loss: %v", i, err)
	}
	hs, _, err := mustLogStore(c.t, srv).InitialState()
	if err != nil {
		srv.Stop()
		c.t.Fatalf("member %d: read hard state: %v", i, err)
	}
	if err := checkHardState(m.hardState, m.termAtCut, hs); err != nil {
		srv.Stop()
		c.t.Fatalf("member %d: %v", i, err)
	}
	if last, err := mustLogStore(c.t, srv).LastIndex(); err != nil || last < m.matchAtCut {
		srv.Stop()
		c.t.Fatalf("member %d: had acknowledged its log up to entry %d to the leader, reopened with a log up to %d (%v)", i, m.matchAtCut, last, err)
	}
	m.matchAtCut = 0
	m.hardState = hs
	if err := srv.Start(); err != nil {
		c.t.Fatalf("member %d: %v", i, err)
	}
	r := &memberRun{srv: srv}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.conn, err = grpc.NewClient(m.cfg.AdvertiseClientURLs[0].Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		c.t.Fatal(err)
	}
	r.kv = pb.NewKVClient(r.conn)
	m.run.Store(r)
}

// slowSync makes an fsync take as long as a disk's may: mostly up to 2ms,
// one in ten 10-30ms. An in-memory sync is instant, and a member that
// answered before its sync finished would get away with it.
func slowSync() {
	d := time.Duration(rand.IntN(2000)) * time.Microsecond
	if rand.IntN(10) == 0 {
		d = time.Duration(10+rand.IntN(20)) * time.Millisecond
	}
	time.Sleep(d)
}

func mustLogStore(t *testing.T, s *Server) *storage.LogStore {
	t.Helper()
	ls, err := storage.OpenLogStore(s.db)
	if err != nil {
		t.Fatalf("open log store: %v", err)
	}
	return ls
}

// checkHardState checks the hard state a member reopened with, hs, against
// the one it reopened with last time, prev (nil the first time), and the
// term it had persisted when the power went: none of them goes back, and a
// vote given in a term is still the vote of that term.
func checkHardState(prev *raftpb.HardState, termAtCut uint64, hs *raftpb.HardState) error {
	if hs.GetTerm() < termAtCut {
		return fmt.Errorf("reopened at term %d, but term %d had been persisted before the power went", hs.GetTerm(), termAtCut)
	}
	if prev == nil {
		return nil
	}
	switch {
	case hs.GetTerm() < prev.GetTerm():
		return fmt.Errorf("term went back from %d to %d", prev.GetTerm(), hs.GetTerm())
	case hs.GetTerm() == prev.GetTerm() && prev.GetVote() != 0 && hs.GetVote() != prev.GetVote():
		return fmt.Errorf("vote of term %d changed from %x to %x: a second vote in one term", hs.GetTerm(), prev.GetVote(), hs.GetVote())
	case hs.GetCommit() < prev.GetCommit():
		return fmt.Errorf("commit index went back from %d to %d", prev.GetCommit(), hs.GetCommit())
	}
	return nil
}

// stop stops the member's current process, whatever its disk.
func (m *powerMember) stop() {
	r := m.run.Load()
	if r == nil {
		return
	}
	r.off.Store(true)
	r.cancel()
	_ = r.conn.Close()
	r.srv.Stop()
	m.run.Store(nil)
}

// cut makes the power go on the given members at once: they are cut off
// from the network, then each disk becomes what had been synced. It returns
// what had been acknowledged before: all of it must survive.
func (c *powerCluster) cut(which ...int) (acked []ackedWrite, compacted int64) {
	// The leader's view of its followers, as of its last tick: what they
	// had acknowledged before the cut.
	var progress *raftnode.Progress
	for _, m := range c.members {
		if r := m.run.Load(); r != nil && !r.off.Load() {
			if p := r.srv.node.Progress(); p != nil {
				progress = p
			}
		}
	}
	thaw := make(chan struct{})
	for _, i := range which {
		c.members[i].frozen.Store(&thaw)
		c.members[i].run.Load().off.Store(true)
	}
	if progress != nil {
		for _, i := range which {
			if mp, ok := progress.Members[c.members[i].id]; ok && !c.isLeader(i) {
				c.members[i].matchAtCut = mp.Match
			}
		}
	}
	for _, i := range which {
		m := c.members[i]
		// Persisted before its term is published (raftnode), so the
		// term read here is on the synced disk.
		m.termAtCut = m.run.Load().srv.node.Term()
	}
	acked, compacted = c.hist.certain()
	for _, i := range which {
		m := c.members[i]
		// Most cuts keep exactly what was synced; some keep part of
		// what was not, as a real disk may (torn, reordered writes).
		cfg := vfs.CrashCloneCfg{}
		if c.intn(3) == 0 {
			cfg = vfs.CrashCloneCfg{UnsyncedDataPercent: 30, RNG: rand.New(rand.NewPCG(uint64(c.intn(1<<30)), 1))}
		}
		m.disk = m.disk.CrashClone(cfg)
	}
	// The old processes' syncs go on, on disks that no longer count.
	for _, i := range which {
		c.members[i].frozen.Store(nil)
	}
	close(thaw)
	for _, i := range which {
		c.members[i].stop()
	}
	return acked, compacted
}

// load runs clients against the running members until ctx ends: puts,
// deletes, transactions of two puts, and compactions, each recorded in the
// history.
func (c *powerCluster) load(ctx context.Context, round, workers int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ctx.Err() == nil; seq++ {
				r := c.members[c.intn(len(c.members))].run.Load()
				if r == nil || r.off.Load() {
					time.Sleep(time.Millisecond)
					continue
				}
				c.op(r, fmt.Sprintf("r%d-w%d-%d", round, w, seq))
			}
		}()
	}
	return &wg
}

func (c *powerCluster) op(m *memberRun, value string) {
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	key := powerKeys[c.intn(len(powerKeys))]
	switch n := c.intn(100); {
	case n < 60:
		c.hist.send(value)
		resp, err := m.kv.Put(ctx, &pb.PutRequest{Key: []byte(key), Value: []byte(value)})
		if err == nil {
			c.hist.ack(m, ackedWrite{key: key, value: value, rev: resp.Header.Revision})
		}
	case n < 75:
		resp, err := m.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte(key)})
		if err == nil {
			c.hist.ack(m, ackedWrite{key: key, rev: resp.Header.Revision, deleted: true})
		}
	case n < 97:
		other := powerKeys[c.intn(len(powerKeys))]
		if other == key {
			return
		}
		v1, v2 := value+"a", value+"b"
		c.hist.send(v1, v2)
		resp, err := m.kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{
			{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(v1)}}},
			{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(other), Value: []byte(v2)}}},
		}})
		if err == nil {
			rev := resp.Header.Revision
			c.hist.ack(m, ackedWrite{key: key, value: v1, rev: rev}, ackedWrite{key: other, value: v2, rev: rev})
		}
	default:
		rev := c.hist.maxAckedRev() - 30
		if rev <= 1 {
			return
		}
		_, err := m.kv.Compact(ctx, &pb.CompactionRequest{Revision: rev})
		if err == nil || errors.Is(err, rpctypes.ErrGRPCCompacted) {
			c.hist.ackCompaction(m, rev)
		}
	}
}

// check reads back, through member i, everything acknowledged before the
// power went: each write at its revision (unless compacted since), the
// compaction, a revision no lower than any acknowledged, and the history of
// each key, in which no value appears twice.
func (c *powerCluster) check(ctx context.Context, i int, acked []ackedWrite, compacted int64) {
	c.t.Helper()
	kv := c.members[i].run.Load().kv
	rangeAt := func(req *pb.RangeRequest) (*pb.RangeResponse, error) {
		for {
			resp, err := kv.Range(ctx, req)
			if err == nil || errors.Is(err, rpctypes.ErrGRPCCompacted) || ctx.Err() != nil {
				return resp, err
			}
			// No leader yet after the reopen, or it is still
			// being elected.
			time.Sleep(10 * time.Millisecond)
		}
	}
	head, err := rangeAt(&pb.RangeRequest{Key: []byte("key/"), RangeEnd: []byte("key0")})
	if err != nil {
		c.t.Fatalf("member %d: read after power loss: %v", i, err)
	}
	var maxRev int64
	for _, w := range acked {
		maxRev = max(maxRev, w.rev)
	}
	if head.Header.Revision < maxRev {
		c.t.Fatalf("member %d: revision %d after power loss, but revision %d had been acknowledged", i, head.Header.Revision, maxRev)
	}
	if compacted > 1 {
		if _, err := rangeAt(&pb.RangeRequest{Key: []byte("key/00"), Revision: compacted - 1}); !errors.Is(err, rpctypes.ErrGRPCCompacted) {
			c.t.Fatalf("member %d: compaction at %d was acknowledged, but a read at %d gives %v", i, compacted, compacted-1, err)
		}
	}
	for _, w := range acked {
		resp, err := rangeAt(&pb.RangeRequest{Key: []byte(w.key), Revision: w.rev})
		if errors.Is(err, rpctypes.ErrGRPCCompacted) {
			continue
		}
		if err != nil {
			c.t.Fatalf("member %d: read %s at %d: %v", i, w.key, w.rev, err)
		}
		switch {
		case w.deleted && len(resp.Kvs) != 0:
			c.t.Fatalf("member %d: %s was deleted at revision %d (acknowledged), but holds %q there after power loss", i, w.key, w.rev, resp.Kvs[0].Value)
		case !w.deleted && (len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != w.value || resp.Kvs[0].ModRevision != w.rev):
			c.t.Fatalf("member %d: %s=%q was acknowledged at revision %d, but after power loss it reads %v", i, w.key, w.value, w.rev, resp.Kvs)
		}
	}
	c.checkNoDoubleApply(i, head, rangeAt)
}

// checkNoDoubleApply walks each key's versions back from the newest to the
// revision the last check reached: each must be one version older than the
// next, hold a value some client sent, and a value found at one revision is
// never found at another (a request applied twice would be).
func (c *powerCluster) checkNoDoubleApply(i int, head *pb.RangeResponse, rangeAt func(*pb.RangeRequest) (*pb.RangeResponse, error)) {
	c.t.Helper()
	h := c.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, kv := range head.Kvs {
		cur := kv
		for cur != nil && cur.ModRevision > h.checkedRev {
			v := string(cur.Value)
			if !h.sent[v] {
				c.t.Fatalf("member %d: %s holds %q at revision %d, which no client sent", i, cur.Key, v, cur.ModRevision)
			}
			if at, seen := h.seenAt[v]; seen && at != cur.ModRevision {
				c.t.Fatalf("member %d: %q is at revisions %d and %d of %s: applied twice", i, v, at, cur.ModRevision, cur.Key)
			}
			h.seenAt[v] = cur.ModRevision
			if cur.Version == 1 {
				break
			}
			prev, err := rangeAt(&pb.RangeRequest{Key: cur.Key, Revision: cur.ModRevision - 1})
			if errors.Is(err, rpctypes.ErrGRPCCompacted) {
				break
			}
			if err != nil {
				c.t.Fatalf("member %d: read %s at %d: %v", i, cur.Key, cur.ModRevision-1, err)
			}
			if len(prev.Kvs) != 1 || prev.Kvs[0].Version != cur.Version-1 {
				c.t.Fatalf("member %d: %s is version %d at revision %d, but the revision before holds %v", i, cur.Key, cur.Version, cur.ModRevision, prev.Kvs)
			}
			cur = prev.Kvs[0]
		}
	}
	h.checkedRev = head.Header.Revision
}

// A single member under load loses power again and again: each time it
// reopens with everything acknowledged.
func TestPowerLossSingleMember(t *testing.T) {
	c := newPowerCluster(t, 1, "power-single")
	c.start(0)
	rounds := newPowerlossRounds(5)
	recoveryCuts, compactionCuts := 0, 0
	for round := 0; rounds.next(); round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		loadCtx, stopLoad := context.WithCancel(ctx)
		wg := c.load(loadCtx, round, 8)
		time.Sleep(time.Duration(100+c.intn(500)) * time.Millisecond)
		if round%3 == 2 {
			// The power goes while the store compacts.
			r := c.members[0].run.Load()
			if rev := c.hist.maxAckedRev() - 5; rev > 1 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := r.kv.Compact(r.ctx, &pb.CompactionRequest{Revision: rev, Physical: true})
					if err == nil || errors.Is(err, rpctypes.ErrGRPCCompacted) {
						c.hist.ackCompaction(r, rev)
					}
				}()
				time.Sleep(time.Duration(c.intn(5)) * time.Millisecond)
				compactionCuts++
			}
		}
		acked, compacted := c.cut(0)
		stopLoad()
		wg.Wait()
		c.start(0)
		if round%2 == 1 {
			// The power goes again while the member replays the
			// entries it had not applied (applying does not sync).
			time.Sleep(time.Duration(c.intn(30)) * time.Millisecond)
			c.cut(0)
			c.start(0)
			recoveryCuts++
		}
		c.check(ctx, 0, acked, compacted)
		cancel()
	}
	acked, _ := c.hist.certain()
	if len(acked) == 0 {
		t.Fatalf("no write was acknowledged: the test checked nothing")
	}
	t.Logf("%d power losses under load (%d of them during a compaction), %d more during recovery, %d acknowledged writes checked", rounds.done-1, compactionCuts, recoveryCuts, len(acked))
}

// churn, until ctx ends, now and then hands leadership to another member,
// or updates a member's peer URLs to what they are (a Raft configuration
// change that leaves the cluster as it was), so that the power goes at
// leader and configuration changes too.
func (c *powerCluster) churn(ctx context.Context) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			time.Sleep(time.Duration(50+c.intn(150)) * time.Millisecond)
			target := c.members[c.intn(len(c.members))]
			if c.intn(3) == 0 {
				r := c.members[c.intn(len(c.members))].run.Load()
				if r == nil || r.off.Load() {
					continue
				}
				mctx, cancel := context.WithTimeout(r.ctx, time.Second)
				if _, err := pb.NewClusterClient(r.conn).MemberUpdate(mctx, &pb.MemberUpdateRequest{
					ID: target.id, PeerURLs: []string{target.cfg.AdvertisePeerURLs[0].String()},
				}); err == nil {
					c.confChanges.Add(1)
				}
				cancel()
				continue
			}
			for _, m := range c.members {
				r := m.run.Load()
				if r == nil || r.off.Load() || r.srv.node.Leader() != m.id {
					continue
				}
				if target.id == m.id {
					break
				}
				mctx, cancel := context.WithTimeout(r.ctx, time.Second)
				if _, err := pb.NewMaintenanceClient(r.conn).MoveLeader(mctx, &pb.MoveLeaderRequest{TargetID: target.id}); err == nil {
					c.moves.Add(1)
				}
				cancel()
				break
			}
		}
	}()
	return &wg
}

// checkSame checks that the members hold the same keys, versions and
// revisions, as of a revision they all applied.
func (c *powerCluster) checkSame(ctx context.Context) {
	c.t.Helper()
	var want *pb.RangeResponse
	for i, m := range c.members {
		r := m.run.Load()
		var rev int64
		if want != nil {
			rev = want.Header.Revision
		}
		for want != nil && r.srv.kv.Rev() < rev {
			if ctx.Err() != nil {
				c.t.Fatalf("member %d never applied revision %d", i, rev)
			}
			time.Sleep(5 * time.Millisecond)
		}
		var got *pb.RangeResponse
		var err error
		for {
			got, err = r.kv.Range(ctx, &pb.RangeRequest{Key: []byte("key/"), RangeEnd: []byte("key0"), Revision: rev, Serializable: want != nil})
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			c.t.Fatalf("member %d: read: %v", i, err)
		}
		if want == nil {
			want = got
			continue
		}
		if len(got.Kvs) != len(want.Kvs) {
			c.t.Fatalf("at revision %d member %d holds %d keys, member 0 %d", rev, i, len(got.Kvs), len(want.Kvs))
		}
		for k := range got.Kvs {
			if !proto.Equal(got.Kvs[k], want.Kvs[k]) {
				c.t.Fatalf("at revision %d member %d holds %v, member 0 %v", rev, i, got.Kvs[k], want.Kvs[k])
			}
		}
	}
	for i, m := range c.members {
		members := m.run.Load().srv.Members()
		if len(members) != len(c.members) {
			c.t.Fatalf("member %d lists %d members, want %d: %+v", i, len(members), len(c.members), members)
		}
		for _, mm := range members {
			if len(mm.PeerURLs) != 1 || mm.IsLearner {
				c.t.Fatalf("member %d lists %+v", i, mm)
			}
		}
	}
}

// Three members under load, with leader changes: the power goes on all of
// them at once (a whole site: what was acknowledged must be on a majority's
// synced log), or on one while the other two keep serving.
func TestPowerLossThreeMembers(t *testing.T) {
	c := newPowerCluster(t, 3, "power-three")
	for i := range 3 {
		c.start(i)
	}
	rounds := newPowerlossRounds(4)
	for round := 0; rounds.next(); round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		loadCtx, stopLoad := context.WithCancel(ctx)
		wg := c.load(loadCtx, round, 8)
		movers := c.churn(loadCtx)
		time.Sleep(time.Duration(200+c.intn(400)) * time.Millisecond)
		var acked []ackedWrite
		var compacted int64
		if round%2 == 0 {
			acked, compacted = c.cut(0, 1, 2)
			stopLoad()
			wg.Wait()
			movers.Wait()
			for i := range 3 {
				c.start(i)
			}
		} else {
			down := c.intn(3)
			c.cut(down)
			// The other two keep serving without it, then it comes
			// back and catches up.
			time.Sleep(time.Duration(100+c.intn(300)) * time.Millisecond)
			c.start(down)
			time.Sleep(time.Duration(c.intn(200)) * time.Millisecond)
			stopLoad()
			wg.Wait()
			movers.Wait()
			acked, compacted = c.hist.certain()
		}
		for i := range 3 {
			c.check(ctx, i, acked, compacted)
		}
		c.checkSame(ctx)
		cancel()
	}
	acked, _ := c.hist.certain()
	if len(acked) == 0 {
		t.Fatalf("no write was acknowledged: the test checked nothing")
	}
	t.Logf("%d rounds of power loss, %d acknowledged writes checked, %d leader moves, %d configuration changes", rounds.done-1, len(acked), c.moves.Load(), c.confChanges.Load())
}

// A member that was down while the log moved on is brought up by a Raft
// snapshot, and the power goes while it receives or installs it, or soon
// after: it reopens, catches up, and holds what the others hold.
func TestPowerLossDuringSnapshotInstall(t *testing.T) {
	c := newPowerCluster(t, 3, "power-snapshot")
	for i := range 3 {
		c.members[i].cfg.SnapshotCount = 20
		c.start(i)
	}
	rounds := newPowerlossRounds(3)
	installsBeforeCut := 0
	for round := 0; rounds.next(); round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		lead := c.leader(ctx)
		down := (lead + 1 + c.intn(2)) % 3
		c.cut(down)
		// The others move the log on past what they keep for it.
		loadCtx, stopLoad := context.WithCancel(ctx)
		wg := c.load(loadCtx, round, 8)
		from := c.members[lead].run.Load().srv.node.AppliedIndex()
		waitFor(ctx, t, func() bool {
			r := c.members[lead].run.Load()
			return r != nil && r.srv.node.AppliedIndex() > from+60
		})
		c.start(down)
		node := c.members[down].run.Load().srv.node
		if round%2 == 0 {
			// Anywhere: receiving, installing, or catching up after.
			time.Sleep(time.Duration(c.intn(300)) * time.Millisecond)
		} else {
			// Right after the install.
			waitFor(ctx, t, func() bool { return node.SnapshotsInstalled() > 0 })
		}
		if node.SnapshotsInstalled() > 0 {
			installsBeforeCut++
		}
		c.cut(down)
		c.start(down)
		stopLoad()
		wg.Wait()
		acked, compacted := c.hist.certain()
		for i := range 3 {
			c.check(ctx, i, acked, compacted)
		}
		c.checkSame(ctx)
		cancel()
	}
	t.Logf("%d rounds; in %d the power went after the snapshot was installed, in the others before or during", rounds.done-1, installsBeforeCut)
}

// isLeader reports whether member i thinks it leads.
func (c *powerCluster) isLeader(i int) bool {
	r := c.members[i].run.Load()
	return r != nil && r.srv.node.Leader() == c.members[i].id
}

// leader waits until the running members agree on a leader and returns its
// index.
func (c *powerCluster) leader(ctx context.Context) int {
	c.t.Helper()
	for {
		lead, agreed := uint64(0), true
		for _, m := range c.members {
			r := m.run.Load()
			if r == nil || r.off.Load() {
				continue
			}
			l := r.srv.node.Leader()
			if l == 0 || (lead != 0 && l != lead) {
				agreed = false
			}
			lead = l
		}
		if agreed && lead != 0 {
			for i, m := range c.members {
				if m.id == lead {
					return i
				}
			}
		}
		if ctx.Err() != nil {
			c.t.Fatalf("no agreed leader among the running members")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
