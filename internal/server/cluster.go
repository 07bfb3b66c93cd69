package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/membershippb"
	"go.etcd.io/raft/v3"
	raftpb "go.etcd.io/raft/v3/raftpb"

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

// loadIdentity reads the cluster and member IDs, or, on a new data dir,
// derives and stores them. For a new data dir it returns the peers to
// bootstrap Raft with.
func (s *Server) loadIdentity() ([]raft.Peer, error) {
	cid, err := storage.GetMetaUint64(s.db, storage.MetaClusterID)
	if err != nil {
		return nil, err
	}
	mid, err := storage.GetMetaUint64(s.db, storage.MetaMemberID)
	if err != nil {
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
		if s.cfg.InitialClusterState == "new" && cid != derived {
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
	if s.cfg.InitialClusterState == "existing" {
		return nil, fmt.Errorf("--initial-cluster-state=existing on an empty data dir: joining a running cluster is not supported yet")
	}
	s.memberID = memberID(s.cfg.AdvertisePeerURLs, s.cfg.InitialClusterToken)
	s.clusterID = derived
	peers := make([]raft.Peer, len(initial))
	for i, m := range initial {
		peers[i] = raft.Peer{ID: m.ID, Context: membership.Encode(m)}
	}
	b := s.db.NewBatch()
	defer func() { _ = b.Close() }()
	if err := storage.PutMetaUint64(b, storage.MetaClusterID, s.clusterID); err != nil {
		return nil, err
	}
	if err := storage.PutMetaUint64(b, storage.MetaMemberID, s.memberID); err != nil {
		return nil, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("store member identity: %w", err)
	}
	return peers, nil
}

// addKnownPeers tells the transport where the members in the applied
// membership are. Members the log adds later reach it through confChanged.
func (s *Server) addKnownPeers() error {
	members, removed, err := membership.List(s.db)
	if err != nil {
		return err
	}
	for _, id := range removed {
		s.peers.RemovePeer(id)
	}
	for _, m := range members {
		s.peers.AddPeer(m.ID, peerAddrs(m.PeerURLs))
	}
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
		switch c.GetType() {
		case raftpb.ConfChangeType_ConfChangeRemoveNode:
			if id == s.memberID {
				s.logger.Warn("this member was removed from the cluster")
				s.fail(ErrRemoved)
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
		if err := s.node.ReadIndex(s.stopContext()); err == nil {
			m, found, err := membership.Get(s.db, s.memberID)
			if err == nil && found && m.Name == attrs.Name && slices.Equal(m.ClientURLs, attrs.ClientUrls) {
				return
			}
			if err == nil {
				ctx, cancel := context.WithTimeout(s.stopContext(), s.requestTimeout())
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
		case <-s.stopC:
			return
		case <-time.After(publishRetry):
		}
	}
}

// stopContext is a context that ends when the server stops.
func (s *Server) stopContext() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-s.stopC:
		case <-ctx.Done():
		}
		cancel()
	}()
	return ctx
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

var errNoSnapshots = errors.New("server: raft snapshots are not supported yet")

func (h peerHandler) WriteSnapshot(io.Writer, *raftpb.Message) error { return errNoSnapshots }

func (h peerHandler) DiscardSnapshot(*raftpb.Message) {}

func (h peerHandler) ReceiveSnapshot(io.Reader, *raftpb.Message) error { return errNoSnapshots }
