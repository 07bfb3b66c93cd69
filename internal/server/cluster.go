package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/membershippb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/raft/v3"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/plinthdb/plinth/internal/membership"
	"github.com/plinthdb/plinth/internal/storage"
	"github.com/plinthdb/plinth/internal/transport"
)

// ErrRemoved stops a member that was removed from the cluster.
var ErrRemoved = errors.New("this member was removed from the cluster; it cannot serve again (start a new member with an empty data dir to rejoin)")

// initialMembers derives the members of a new cluster from
// --initial-cluster and --initial-cluster-token, ordered by ID: every member
// of the cluster derives the same list.
func (c *Config) initialMembers() []membership.Member {
	var out []membership.Member
	for name, urls := range c.InitialCluster {
		out = append(out, membership.Member{ID: memberID(urls, c.InitialClusterToken), Name: name, PeerURLs: urlStrings(urls)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// How a member came to its cluster (storage.MetaJoined).
const (
	bootstrapped    = 0 // one of a new cluster's initial members
	joinedExisting  = 1 // added with member add, started with --initial-cluster-state=existing
	joinedPromoting = 2 // joined with --join, not yet promoted to voter
	joinedPromoted  = 3 // joined with --join, promoted
)

// loadIdentity reads the cluster and member IDs, or, on a new data dir,
// learns them: derives them from the flags for a new cluster, or asks a
// running cluster for them when joining it. For a member of a new cluster it
// returns the peers to bootstrap Raft with.
func (s *Server) loadIdentity() ([]raft.Peer, error) {
	cid, err := storage.GetMetaUint64(s.db, storage.MetaClusterID)
	if err != nil {
		return nil, err
	}
	mid, err := storage.GetMetaUint64(s.db, storage.MetaMemberID)
	if err != nil {
		return nil, err
	}
	if s.joined, err = storage.GetMetaUint64(s.db, storage.MetaJoined); err != nil {
		return nil, err
	}
	initial := s.cfg.initialMembers()
	ids := make([]uint64, len(initial))
	for i, m := range initial {
		ids[i] = m.ID
	}
	derived := clusterID(ids, s.cfg.InitialClusterToken)
	if cid != 0 && mid != 0 {
		s.clusterID, s.memberID = cid, mid
		// A member bootstrapped with a new cluster derives the same
		// cluster ID from its flags at every start: another ID means
		// the data dir was made for another cluster.
		if s.joined == bootstrapped && s.cfg.Join == "" && s.cfg.InitialClusterState == "new" && cid != derived {
			return nil, fmt.Errorf("data dir %s belongs to cluster %x, but --initial-cluster and --initial-cluster-token describe cluster %x: refusing to mix them (use the data dir of this cluster, or the flags it was created with)", s.cfg.DataDir, cid, derived)
		}
		removed, err := membership.IsRemoved(s.db, mid)
		if err != nil {
			return nil, err
		}
		if removed {
			return nil, fmt.Errorf("member %x: %w", mid, ErrRemoved)
		}
		return nil, nil
	}
	var peers []raft.Peer
	switch {
	case s.cfg.Join != "":
		if err := s.joinByClientURL(); err != nil {
			return nil, err
		}
		s.joined = joinedPromoting
	case s.cfg.InitialClusterState == "existing":
		if err := s.joinExisting(); err != nil {
			return nil, err
		}
		s.joined = joinedExisting
	default:
		s.memberID = memberID(s.cfg.AdvertisePeerURLs, s.cfg.InitialClusterToken)
		s.clusterID = derived
		peers = make([]raft.Peer, len(initial))
		for i, m := range initial {
			peers[i] = raft.Peer{ID: m.ID, Context: membership.Encode(m)}
		}
	}
	b := s.db.NewBatch()
	defer func() { _ = b.Close() }()
	if err := storage.PutMetaUint64(b, storage.MetaClusterID, s.clusterID); err != nil {
		return nil, err
	}
	if err := storage.PutMetaUint64(b, storage.MetaMemberID, s.memberID); err != nil {
		return nil, err
	}
	if err := storage.PutMetaUint64(b, storage.MetaJoined, s.joined); err != nil {
		return nil, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("store member identity: %w", err)
	}
	return peers, nil
}

// joinExisting learns the cluster's ID and this member's from a member of
// --initial-cluster, as etcd's --initial-cluster-state=existing does: the
// member must have been added (member add) with this member's peer URLs.
func (s *Server) joinExisting() error {
	self := urlStrings(s.cfg.AdvertisePeerURLs)
	var errs []error
	for name, urls := range s.cfg.InitialCluster {
		if name == s.cfg.Name {
			continue
		}
		for _, addr := range peerAddrs(urlStrings(urls)) {
			cid, records, err := transport.FetchMembers(nil, addr)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			var members []membership.Member
			for _, r := range records {
				m, err := membership.Decode(r)
				if err != nil {
					return fmt.Errorf("member list from %s: %w", addr, err)
				}
				members = append(members, m)
			}
			for _, m := range members {
				if slices.ContainsFunc(m.PeerURLs, func(u string) bool { return slices.Contains(self, u) }) {
					s.clusterID, s.memberID = cid, m.ID
					s.joinMembers = members
					s.logger.Info("joining a running cluster", "cluster", fmt.Sprintf("%x", cid), "member", fmt.Sprintf("%x", m.ID))
					return nil
				}
			}
			return fmt.Errorf("--initial-cluster-state=existing: cluster %x (asked at %s) has no member with peer URLs %s: add it first (member add --peer-urls=%s)", cid, addr, strings.Join(self, ","), strings.Join(self, ","))
		}
	}
	return fmt.Errorf("--initial-cluster-state=existing: no member of --initial-cluster answered: %w", errors.Join(errs...))
}

// joinUnhealthyWait is how long --join asks again while the cluster answers
// that it cannot take a new member safely; joinRetry, how often.
const (
	joinUnhealthyWait = 30 * time.Second
	joinRetry         = time.Second
)

// isUnhealthy reports whether err is etcd's "unhealthy cluster".
func isUnhealthy(err error) bool {
	return status.Convert(err).Message() == rpctypes.ErrorDesc(rpctypes.ErrGRPCUnhealthy)
}

// joinByClientURL adds this member to the cluster that the member at
// --join serves, as a learner, and learns the cluster's and its own ID. A
// retry after a crash finds the learner it added before by its peer URLs.
func (s *Server) joinByClientURL() error {
	// A cluster refuses a new member while its leader has not heard from
	// enough voters lately (just started, or a member restarting): that
	// passes, so the add is asked again for a while.
	ctx, cancel := context.WithTimeout(context.Background(), s.requestTimeout()+joinUnhealthyWait)
	defer cancel()
	u, err := url.Parse(s.cfg.Join)
	if err != nil || u.Host == "" {
		return fmt.Errorf("--join %q: want the client URL of a member, http://host:port", s.cfg.Join)
	}
	conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("--join %s: %w", s.cfg.Join, err)
	}
	defer conn.Close()
	cli := pb.NewClusterClient(conn)
	self := urlStrings(s.cfg.AdvertisePeerURLs)
	var (
		cid     uint64
		id      uint64
		members []*pb.Member
	)
	resp, err := cli.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: self, IsLearner: true})
	for retryUntil := time.Now().Add(joinUnhealthyWait); isUnhealthy(err) && time.Now().Before(retryUntil); {
		s.logger.Warn("the cluster cannot take a new member yet; asking again", "via", s.cfg.Join, "err", err)
		time.Sleep(joinRetry)
		resp, err = cli.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: self, IsLearner: true})
	}
	switch {
	case err == nil:
		cid, id, members = resp.GetHeader().GetClusterId(), resp.GetMember().GetID(), resp.GetMembers()
	case status.Convert(err).Message() == rpctypes.ErrorDesc(rpctypes.ErrGRPCPeerURLExist):
		// Added before (a crash after the add, before the identity was
		// stored): the learner with our peer URLs that never started is
		// us.
		list, lerr := cli.MemberList(ctx, &pb.MemberListRequest{Linearizable: true})
		if lerr != nil {
			return fmt.Errorf("--join %s: %w", s.cfg.Join, lerr)
		}
		for _, m := range list.GetMembers() {
			if slices.Equal(m.GetPeerURLs(), self) && m.GetIsLearner() && m.GetName() == "" {
				cid, id, members = list.GetHeader().GetClusterId(), m.GetID(), list.GetMembers()
			}
		}
		if id == 0 {
			return fmt.Errorf("--join %s: another member already has peer URLs %s", s.cfg.Join, strings.Join(self, ","))
		}
	default:
		return fmt.Errorf("--join %s: add this member: %w", s.cfg.Join, err)
	}
	s.clusterID, s.memberID = cid, id
	for _, m := range members {
		s.joinMembers = append(s.joinMembers, membership.Member{ID: m.GetID(), Name: m.GetName(), PeerURLs: m.GetPeerURLs(), ClientURLs: m.GetClientURLs(), IsLearner: m.GetIsLearner()})
	}
	s.logger.Info("joined a running cluster as a learner", "cluster", fmt.Sprintf("%x", cid), "member", fmt.Sprintf("%x", id), "via", s.cfg.Join)
	return nil
}

// promoteSelf promotes this member, which joined with --join as a learner,
// to voter once it has caught up with the leader. It retries until it is a
// voter or the server stops.
func (s *Server) promoteSelf() {
	defer s.serveWG.Done()
	if s.joined != joinedPromoting {
		return
	}
	for {
		m, found, err := membership.Get(s.db, s.memberID)
		if err == nil && found && !m.IsLearner {
			b := s.db.NewBatch()
			err = storage.PutMetaUint64(b, storage.MetaJoined, joinedPromoted)
			if err == nil {
				err = b.Commit(pebble.Sync)
			}
			_ = b.Close()
			if err == nil {
				s.logger.Info("promoted to voter")
				return
			}
		}
		if err == nil && found {
			ctx, cancel := context.WithTimeout(s.stopCtx, s.requestTimeout())
			err = s.PromoteMember(ctx, s.memberID)
			cancel()
		}
		if err != nil {
			s.logger.Debug("promote this learner", "err", err)
		}
		select {
		case <-s.stopCtx.Done():
			return
		case <-time.After(promoteRetry):
		}
	}
}

// promoteRetry is how often a learner that joined with --join asks to be
// promoted.
const promoteRetry = 500 * time.Millisecond

// addKnownPeers tells the transport where the members in the applied
// membership are: at start, and after a snapshot replaced the membership.
// Members the log adds later reach it through confChanged.
func (s *Server) addKnownPeers() error {
	members, removed, err := membership.List(s.db)
	if err != nil {
		return err
	}
	for _, id := range removed {
		if id == s.memberID {
			s.fail(ErrRemoved)
			continue
		}
		s.peers.RemovePeer(id)
	}
	members = append(members, s.joinMembers...)
	for _, m := range members {
		s.peers.AddPeer(m.ID, peerAddrs(m.PeerURLs))
	}
	s.noteSelf(members)
	return nil
}

// peerAddrs turns peer URLs into the host:port addresses the transport dials.
func peerAddrs(urls []string) []string {
	var out []string
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			continue
		}
		out = append(out, u.Host)
	}
	return out
}

// confChanged runs on the raft loop when a configuration change takes effect
// in Raft: the transport learns of added, moved and removed peers. A member
// that is itself removed stops.
func (s *Server) confChanged(cc *raftpb.ConfChangeV2) {
	for _, c := range cc.GetChanges() {
		id := c.GetNodeId()
		if id == s.memberID {
			switch c.GetType() {
			case raftpb.ConfChangeType_ConfChangeAddLearnerNode:
				s.learner.Store(true)
			case raftpb.ConfChangeType_ConfChangeAddNode: // a promotion
				s.learner.Store(false)
			}
		}
		switch c.GetType() {
		case raftpb.ConfChangeType_ConfChangeRemoveNode:
			if id == s.memberID {
				// The request that removed this member may be
				// waiting on it for its answer: stop a moment later,
				// as etcd does.
				s.logger.Warn("this member was removed from the cluster; stopping", "in", removedGrace.String())
				go func() {
					select {
					case <-time.After(removedGrace):
					case <-s.stopCtx.Done():
					}
					s.fail(ErrRemoved)
				}()
				continue
			}
			s.peers.RemovePeer(id)
		default:
			m, err := membership.Decode(cc.GetContext())
			if err != nil || m.ID != id {
				continue // a promotion carries no addresses; the peer is known
			}
			s.peers.AddPeer(id, peerAddrs(m.PeerURLs))
		}
	}
}

// removedGrace is how long a removed member goes on before it stops.
const removedGrace = time.Second

// publishRetry is how long publish waits between attempts.
const publishRetry = 500 * time.Millisecond

// publish records this member's name and client URLs in the membership,
// through the log, as etcd members do when they start: until then other
// members know only its peer URLs. It retries until it succeeds or the server
// stops.
func (s *Server) publish() {
	defer s.serveWG.Done()
	attrs := &membershippb.Attributes{Name: s.cfg.Name, ClientUrls: urlStrings(s.cfg.AdvertiseClientURLs)}
	for {
		if err := s.node.ReadIndex(s.stopCtx); err == nil {
			m, found, err := membership.Get(s.db, s.memberID)
			if err == nil && found && m.Name == attrs.Name && slices.Equal(m.ClientURLs, attrs.ClientUrls) {
				return
			}
			if err == nil {
				ctx, cancel := context.WithTimeout(s.stopCtx, s.requestTimeout())
				req := &pb.InternalRaftRequest{ClusterMemberAttrSet: &membershippb.ClusterMemberAttrSetRequest{Member_ID: s.memberID, MemberAttributes: attrs}}
				_, err = s.Propose(ctx, req)
				cancel()
				if err == nil {
					s.logger.Info("published member attributes", "name", attrs.Name, "client-urls", attrs.ClientUrls)
					return
				}
			}
			s.logger.Debug("publish member attributes", "err", err)
		}
		select {
		case <-s.stopCtx.Done():
			return
		case <-time.After(publishRetry):
		}
	}
}

// peerHandler connects the transport to the Raft node.
type peerHandler struct{ s *Server }

func (h peerHandler) Process(m *raftpb.Message) {
	if transport.IsRemovedNotice(m) {
		h.s.logger.Warn("a peer says this member was removed from the cluster", "peer", fmt.Sprintf("%x", m.GetFrom()))
		h.s.fail(ErrRemoved)
		return
	}
	h.s.node.Step(m)
}

func (h peerHandler) ReportUnreachable(id uint64) { h.s.node.ReportUnreachable(id) }

func (h peerHandler) ReportSnapshot(id uint64, ok bool) { h.s.node.ReportSnapshot(id, ok) }

func (h peerHandler) WriteSnapshot(w io.Writer, m *raftpb.Message) error {
	return h.s.node.WriteSnapshot(w, m)
}

func (h peerHandler) DiscardSnapshot(m *raftpb.Message) { h.s.node.DiscardSnapshot(m) }

func (h peerHandler) ReceiveSnapshot(r io.Reader, m *raftpb.Message) error {
	return h.s.node.ReceiveSnapshot(r, m)
}
