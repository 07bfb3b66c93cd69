// Package server builds a plinth member from its configuration and runs it:
// it opens the Pebble database, the MVCC store, the state machine and the
// Raft node in that order, serves the etcd gRPC API on the client URLs, and
// takes them down in the reverse order. It also carries requests between the
// API and Raft: proposing them and waiting for their applied results.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/plinthdb/plinth/internal/api"
	"github.com/plinthdb/plinth/internal/apply"
	"github.com/plinthdb/plinth/internal/connmux"
	"github.com/plinthdb/plinth/internal/lockelect"
	"github.com/plinthdb/plinth/internal/lockelect/v3electionpb"
	"github.com/plinthdb/plinth/internal/lockelect/v3lockpb"
	"github.com/plinthdb/plinth/internal/membership"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/raftnode"
	"github.com/plinthdb/plinth/internal/snapshot"
	"github.com/plinthdb/plinth/internal/storage"
	"github.com/plinthdb/plinth/internal/transport"
	"github.com/plinthdb/plinth/internal/watch"
)

// Version is the etcd API version plinth answers as: the semantics it copies.
const Version = "3.6.0"

// grpcOverheadBytes is the room gRPC messages get above the request size
// limit, so that an oversized request reaches the server and gets etcd's
// "request is too large" instead of a transport error.
const grpcOverheadBytes = 512 * 1024

// Server is one running plinth member.
type Server struct {
	cfg        Config
	logger     *slog.Logger
	db         *pebble.DB
	kv         *mvcc.Store
	watches    *watch.Hub // told of every commit by the apply loop
	applier    *apply.Applier
	node       *raftnode.Node
	peers      *transport.Transport
	grpc       *grpc.Server
	learner    atomic.Bool // this member is a learner (see learner.go)
	listeners  []net.Listener
	httpServer *http.Server // diagnostics; nil unless metrics URLs are set
	clientHTTP *http.Server // /metrics, /health on the client URLs
	clientMux  []*connmux.Mux
	metrics    *serverMetrics

	clusterID uint64
	memberID  uint64
	joined    uint64 // how this member came to its cluster (see loadIdentity)
	// joinMembers are the members a joining member learned of, before its
	// log holds them; the transport needs their addresses to begin.
	joinMembers []membership.Member
	ids         *idGenerator
	waits       waitRegistry
	// confMu serializes this member's configuration changes: Raft
	// refuses a change while another is pending. Held while one is
	// proposed and applied.
	confMu sync.Mutex
	quota  quotaState
	// leaseMu serializes promotions and demotions of the lease table.
	leaseMu   sync.Mutex
	forwarder *leaseForwarder

	serveWG  sync.WaitGroup
	stopOnce sync.Once
	// stopCtx ends when Stop begins: it ends the server's goroutines, and
	// the server's own requests (publish, self-promotion) wait on it.
	stopCtx    context.Context
	cancelStop context.CancelFunc
	// stopping is closed when Stop begins, before the gRPC server drains:
	// long-lived streams (keep-alives) end on it.
	stopping chan struct{}
	// unaryInFlight counts the unary requests being served: Stop waits
	// for them, not for the streams clients hold open (see Stop).
	unaryInFlight atomic.Int64

	failOnce sync.Once
	failErr  error
	failedC  chan struct{} // closed when the member must stop; failErr says why
}

// New opens the member's state in cfg.DataDir and prepares it to serve.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if cfg.FS == nil {
		cfg.FS = vfs.Default
	}
	if err := mkdirSynced(cfg.FS, cfg.DataDir); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	pacer := new(storage.SyncPacer)
	db, err := storage.OpenFS(cfg.FS, storage.DatabaseDir(cfg.DataDir), logger, pacer)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, logger: logger, db: db, failedC: make(chan struct{}), stopping: make(chan struct{})}
	s.stopCtx, s.cancelStop = context.WithCancel(context.Background())
	s.waits.init()
	s.forwarder = &leaseForwarder{s: s}
	if err := s.open(pacer); err != nil {
		s.cancelStop()
		if s.watches != nil {
			s.watches.Close()
		}
		if s.kv != nil {
			s.kv.Close()
		}
		_ = db.Close()
		return nil, err
	}
	s.metrics = s.newServerMetrics()
	return s, nil
}

func (s *Server) open(pacer *storage.SyncPacer) error {
	boot, err := s.loadIdentity()
	if err != nil {
		return err
	}
	s.ids = newIDGenerator(s.memberID, time.Now())
	logStore, err := storage.OpenLogStore(s.db)
	if err != nil {
		return err
	}
	if s.kv, err = mvcc.Open(s.db, s.logger); err != nil {
		return err
	}
	if s.applier, err = apply.New(s.db, s.kv, s.logger); err != nil {
		return err
	}
	s.watches = watch.NewHub(s.kv, watch.Config{
		ProgressInterval: s.cfg.WatchProgressNotifyInterval,
		MaxResponseBytes: s.cfg.MaxRequestBytes,
		// Entries in the log not yet committed, or this member's clients'
		// writes not yet applied (a follower's go to the leader first).
		// s.node is made below, before any stream is served.
		WritesInFlight: func() bool { return s.node.WritesInFlight() || s.waits.pending() },
		Logger:         s.logger,
	})
	// Images received but not installed before a stop are of no use now.
	snapDir := filepath.Join(s.cfg.DataDir, "snap")
	if err := mkdirSynced(s.cfg.FS, snapDir); err != nil {
		return fmt.Errorf("create snapshot dir: %w", err)
	}
	if err := snapshot.Cleanup(s.cfg.FS, snapDir); err != nil {
		return err
	}
	if err := removeStaleBackups(s.cfg.FS, s.cfg.DataDir); err != nil {
		return err
	}
	electionTicks := int(s.cfg.ElectionTimeout / s.cfg.HeartbeatInterval)
	s.peers = transport.New(transport.Config{
		ClusterID: s.clusterID,
		ID:        s.memberID,
		Handler:   peerHandler{s},
		Logger:    s.logger,
		Members:   s.encodedMembers,
		Blocked:   s.cfg.PeerBlocked,
		VoteHold:  raftnode.VoteHold(s.cfg.HeartbeatInterval, electionTicks),
	})
	if err := s.addKnownPeers(); err != nil {
		return err
	}
	s.node, err = raftnode.New(raftnode.Config{
		ID:            s.memberID,
		Peers:         boot,
		TickInterval:  s.cfg.HeartbeatInterval,
		ElectionTicks: electionTicks,
		Transport:     s.peers,
		OnConfChange:  s.confChanged,
		ReadTimeout:   s.requestTimeout(),
		SnapshotDir:   snapDir,
		FS:            s.cfg.FS,
		Applied:       s.applier.AppliedIndex(),
		LogRetention:  s.cfg.SnapshotCount,
		OnDropped:     s.proposalDropped,
		Logger:        s.logger,
		SyncPacer:     pacer, // db's: the raft loop drives its syncs
		ReadLease:     !s.cfg.WithoutReadLease,
		PeerVoteHold:  s.peers.PeerVoteHold,
	}, s.db, logStore, stateMachine{s})
	return err
}

// mkdirSynced creates dir and its missing parents, and syncs the directory
// that holds each, so that a power loss does not take the new directory, and
// what is later synced inside it, away.
func mkdirSynced(fs vfs.FS, dir string) error {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := fs.Stat(d); err == nil {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := fs.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, d := range missing {
		parent, err := fs.OpenDir(filepath.Dir(d))
		if err != nil {
			return err
		}
		err = parent.Sync()
		if cerr := parent.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("sync %s: %w", filepath.Dir(d), err)
		}
	}
	return nil
}

// streamWorkers is the size of the gRPC stream worker pool. Requests beyond it
// still get a goroutine of their own, whose stack grows (a copy) on the way
// to the handler: with no pool a put costs ~7% more CPU. An idle worker
// holds ~2.5 KiB (a minimal stack and its g), so the pool is also memory an
// idle member holds: 512 workers cost the same CPU per put as 1024 under the
// benchmark's 1000 clients on one member, and 1.2 MiB less.
const streamWorkers = 512

// The flow-control windows of client connections, fixed. By default gRPC
// starts each window at 64 KiB and grows it from its own estimate of the
// link's bandwidth-delay product, which it measures with a PING to the client
// for each burst of data it receives, and the client answers each one. Under
// the benchmark tool's small requests those pings cost both sides:
// alternating rounds, three members, ten pairs, medians (docs/performance.md,
// machine R): server CPU per put 4% lower with fixed windows, per keep-alive
// 7% lower, and the client's 5-7% lower (one member under puts made 23% fewer
// read system calls). The stream window lets a request of the default
// largest size (1.5 MiB) go without waiting for a window update; the
// connection's is the largest the estimate ever grows to (16 MiB), so a
// connection never has more in flight than gRPC's estimate could have let it.
const (
	clientStreamWindow = 2 << 20
	clientConnWindow   = 16 << 20
)

// sweepInterval is the resolution of request timeouts.
const sweepInterval = 250 * time.Millisecond

// sweepTimeouts fails the proposals, and the renewals forwarded to the
// leader, that waited longer than the request timeout. It runs until Stop.
func (s *Server) sweepTimeouts() {
	defer s.serveWG.Done()
	maxAge := int64(s.requestTimeout() / sweepInterval)
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stopCtx.Done():
			return
		case <-t.C:
			s.metrics.proposalsFailed.Add(float64(s.waits.tick(maxAge, api.ErrTimeout)))
			s.forwarder.expire(maxAge)
		}
	}
}

// Start starts Raft, serves peers on the listen peer URLs and clients on the
// listen client URLs.
func (s *Server) Start() error {
	for _, u := range s.cfg.ListenPeerURLs {
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			s.peers.Stop()
			return fmt.Errorf("listen for peers on %s: %w", u.String(), err)
		}
		s.peers.Serve(l)
		s.logger.Info("serving peers", "addr", l.Addr().String())
	}
	s.node.Start()
	if s.cfg.CorruptCheck.Initial {
		if err := s.checkInitialHashes(); err != nil {
			s.Stop()
			return err
		}
	}
	s.serveWG.Add(7)
	go s.checkHashesPeriodically()
	go s.measureDBSize()
	go s.sweepTimeouts()
	go s.watchNode()
	go s.publish()
	go s.promoteSelf()
	go s.autoCompact()
	s.serveWG.Add(1)
	go s.runLeases()
	s.grpc = grpc.NewServer(
		grpc.ChainUnaryInterceptor(s.countUnary, s.metrics.grpc.unary, s.refuseOnLearnerUnary),
		grpc.ChainStreamInterceptor(s.metrics.grpc.stream, s.refuseOnLearnerStream),
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestBytes+grpcOverheadBytes),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(math.MaxUint32),
		// A pool of long-lived stream workers: their stacks stay grown,
		// where a fresh goroutine per request grows its stack every time.
		grpc.NumStreamWorkers(streamWorkers),
		grpc.StaticStreamWindowSize(clientStreamWindow),
		grpc.StaticConnWindowSize(clientConnWindow),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	kv, leases := api.NewKV(s), api.NewLease(s)
	pb.RegisterKVServer(s.grpc, kv)
	pb.RegisterMaintenanceServer(s.grpc, api.NewMaintenance(s))
	pb.RegisterAuthServer(s.grpc, api.NewAuth(s))
	pb.RegisterClusterServer(s.grpc, api.NewCluster(s))
	pb.RegisterLeaseServer(s.grpc, leases)
	if !s.cfg.withoutRenewalService {
		s.grpc.RegisterService(&renewalServiceDesc, s)
	}
	pb.RegisterWatchServer(s.grpc, api.NewWatch(s, s.watches, s.node.Leader, s.cfg.ElectionTimeout))
	lockelectCfg := lockelect.Config{KV: kv, Leases: leases, Hub: s.watches, FillHeader: s.FillHeader}
	v3lockpb.RegisterLockServer(s.grpc, lockelect.NewLock(lockelectCfg))
	v3electionpb.RegisterElectionServer(s.grpc, lockelect.NewElection(lockelectCfg))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, hs)
	for _, u := range s.cfg.ListenClientURLs {
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			s.Stop()
			return fmt.Errorf("listen on %s: %w", u.String(), err)
		}
		s.listeners = append(s.listeners, l)
	}
	if err := s.startDiagnostics(); err != nil {
		s.Stop()
		return err
	}
	s.serveClients()
	return nil
}

// ClientAddrs returns the addresses the member listens on for clients.
func (s *Server) ClientAddrs() []string {
	out := make([]string, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Addr().String()
	}
	return out
}

// Failed is closed when the member must stop: on an internal error, or when
// it was removed from the cluster. Err tells why.
func (s *Server) Failed() <-chan struct{} { return s.failedC }

// Err tells why the member failed, if it did.
func (s *Server) Err() error {
	select {
	case <-s.failedC:
		return s.failErr
	default:
		return nil
	}
}

func (s *Server) fail(err error) {
	s.failOnce.Do(func() {
		s.failErr = err
		close(s.failedC)
	})
}

// watchNode fails the member when its Raft node fails.
func (s *Server) watchNode() {
	defer s.serveWG.Done()
	select {
	case <-s.stopCtx.Done():
	case <-s.node.Failed():
		s.fail(s.node.Err())
	}
}

// Stop stops serving, stops Raft and closes the database. In-flight requests
// get a few seconds to finish.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.Err() == nil {
			s.handOffLeadership()
		}
		close(s.stopping)
		// Watch streams never end on their own: end them first, or
		// the graceful stop below waits for them in vain.
		s.watches.Close()
		if s.grpc != nil {
			done := make(chan struct{})
			go func() { s.grpc.GracefulStop(); close(done) }()
			s.awaitUnary(done, 3*time.Second)
			s.grpc.Stop()
			<-done
		}
		if s.httpServer != nil {
			_ = s.httpServer.Close()
		}
		if s.clientHTTP != nil {
			_ = s.clientHTTP.Close()
		}
		for _, m := range s.clientMux {
			_ = m.Close()
		}
		s.cancelStop()
		s.serveWG.Wait()
		s.forwarder.close()
		s.peers.Stop()
		s.node.Stop()
		s.waits.failAll(raftnode.ErrStopped)
		s.kv.Close()
		s.logger.Debug("pebble metrics at stop\n" + s.db.Metrics().String())
		if err := s.db.Close(); err != nil {
			s.logger.Error("close database", "err", err)
		}
	})
}

// stateMachine feeds committed entries to the applier and hands each result
// to the request waiting for it.
type stateMachine struct{ s *Server }

// Install replaces the state with a snapshot's image, reloads every copy of
// it in memory, and tells the transport of the members it holds.
func (m stateMachine) Install(img snapshot.Image) error {
	if err := m.s.applier.Restore(func() error { return snapshot.Install(m.s.db, img) }); err != nil {
		return err
	}
	m.s.watches.Notify()
	return m.s.addKnownPeers()
}

func (m stateMachine) Apply(ents []*raftpb.Entry, cs *raftpb.ConfState) error {
	results, err := m.s.applier.Apply(ents, cs)
	if err != nil {
		return err
	}
	for _, r := range results {
		m.s.waits.trigger(r.ID, r)
	}
	// After the triggers: the hub, deciding whether to hold this batch's
	// events back, finds none of its writes still waiting (see
	// watch.Config.WritesInFlight).
	m.s.watches.Notify() // never blocks; the hub reads the new events itself
	return nil
}

// KV implements api.Backend.
func (s *Server) KV() *mvcc.Store { return s.kv }

// FillHeader implements api.Backend.
func (s *Server) FillHeader(h *pb.ResponseHeader) {
	h.ClusterId = s.clusterID
	h.MemberId = s.memberID
	h.RaftTerm = s.node.Term()
	if h.Revision == 0 {
		h.Revision = s.kv.Rev()
	}
}

// ReadIndex implements api.Backend.
func (s *Server) ReadIndex(ctx context.Context) error { return s.node.ReadIndex(ctx) }

// Status implements api.StatusSource.
func (s *Server) Status() api.MemberStatus {
	// The quota's measure estimates, where the disk usage counts files:
	// what is in use is never reported above the whole.
	usage, inUse := s.quota.dbSize.Load(), s.quota.dataSize.Load()
	inUse = min(inUse, usage)
	self, _, err := membership.Get(s.db, s.memberID)
	if err != nil {
		s.logger.Error("read this member's record", "err", err)
	}
	return api.MemberStatus{
		IsLearner:    self.IsLearner,
		Version:      Version,
		DBSize:       usage,
		DBSizeInUse:  inUse,
		DBSizeQuota:  s.quotaBytes(),
		Leader:       s.node.Leader(),
		RaftIndex:    s.node.CommitIndex(),
		RaftTerm:     s.node.Term(),
		AppliedIndex: s.node.AppliedIndex(),
	}
}

// Members implements api.MemberSource.
func (s *Server) Members() []api.Member {
	members, _, err := membership.List(s.db)
	if err != nil {
		s.logger.Error("list members", "err", err)
		return nil
	}
	out := make([]api.Member, len(members))
	for i, m := range members {
		out[i] = api.Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner}
	}
	return out
}

// encodedMembers answers a joining member's question of who is in the
// cluster.
func (s *Server) encodedMembers() [][]byte {
	members, _, err := membership.List(s.db)
	if err != nil {
		s.logger.Error("list members", "err", err)
		return nil
	}
	out := make([][]byte, len(members))
	for i, m := range members {
		out[i] = membership.Encode(m)
	}
	return out
}

// HashKV implements api.HashSource.
func (s *Server) HashKV(rev int64) (mvcc.KVHash, error) { return s.kv.HashKV(rev) }

// countUnary is the outermost unary interceptor: it keeps unaryInFlight.
func (s *Server) countUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.unaryInFlight.Add(1)
	defer s.unaryInFlight.Add(-1)
	return handler(ctx, req)
}

// awaitUnary waits, while the gRPC server stops gracefully (done closes when
// it has), until no unary request is being served, or for grace at most.
// Streams are not waited for: a keep-alive stream's handler waits in Recv
// between a client's renewals, where nothing in the server can reach it, and
// a graceful stop would wait its whole grace period for every such stream.
// Streams that wait on something else return when stopping closes (watches,
// keep-alives waiting for the leader's answer); the rest end when the
// connections close, and their clients retry another member. It waits
// settle at least, so that requests that reached the server before the
// graceful stop began are counted before it looks.
func (s *Server) awaitUnary(done <-chan struct{}, grace time.Duration) {
	const settle = 50 * time.Millisecond
	start := time.Now()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for time.Since(start) < settle || (s.unaryInFlight.Load() > 0 && time.Since(start) < grace) {
		select {
		case <-done:
			return
		case <-tick.C:
		}
	}
}
