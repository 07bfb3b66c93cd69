package server

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/plinthdb/plinth/internal/api"
	"github.com/plinthdb/plinth/internal/membership"
	"github.com/plinthdb/plinth/internal/raftnode"
)

// Membership changes are decided by the leader, which sees the members'
// logs: a change that reaches a follower is forwarded to the leader's client
// URL, and answered once this member has applied it too.
//
// The checks are etcd's (v3.7, with its strict reconfiguration check on), in
// its order: a voter is added or promoted only while a quorum of the grown
// cluster has started (published its name); any member, learner or voter, is
// added only while the active voters would still form a quorum of the grown
// cluster, the newcomer counted as down (a lone member may always grow); at
// most maxLearners learners; a voter is removed only if the started voters
// left form a quorum and, unless it is down itself, the active ones too; a
// learner is promoted only once its log matches at least
// learnerReadyFraction of the leader's.
const (
	maxLearners          = 1
	learnerReadyFraction = 0.9
)

// decideOnLeader runs a membership change where it is decided: here, under
// confMu and on the applied member records, when this member leads; else it
// forwards the request to the leader and returns once this member applied
// the change too.
func (s *Server) decideOnLeader(ctx context.Context, forward func(pb.ClusterClient) error, decide func(members []membership.Member, removed []uint64) error) error {
	cli, done, err := s.leaderCluster(ctx)
	if err != nil {
		return err
	}
	if cli != nil {
		defer done()
		if err := forward(cli); err != nil {
			return err
		}
		return s.catchUp(ctx)
	}
	s.confMu.Lock()
	defer s.confMu.Unlock()
	members, removed, err := membership.List(s.db)
	if err != nil {
		return err
	}
	return decide(members, removed)
}

// findMember returns the index of member id in members.
func findMember(members []membership.Member, id uint64) (int, error) {
	i := slices.IndexFunc(members, func(m membership.Member) bool { return m.ID == id })
	if i < 0 {
		return 0, api.ErrMemberNotFound
	}
	return i, nil
}

// peerURLTaken refuses peer URLs that a member other than except has.
func peerURLTaken(members []membership.Member, peerURLs []string, except uint64) error {
	for _, m := range members {
		if m.ID != except && slices.ContainsFunc(m.PeerURLs, func(u string) bool { return slices.Contains(peerURLs, u) }) {
			return api.ErrPeerURLExist
		}
	}
	return nil
}

// AddMember implements api.MemberSource.
func (s *Server) AddMember(ctx context.Context, peerURLs []string, learner bool) (api.Member, error) {
	var added api.Member
	err := s.decideOnLeader(ctx, func(cli pb.ClusterClient) error {
		resp, err := cli.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: peerURLs, IsLearner: learner})
		if err != nil {
			return err
		}
		m := resp.GetMember()
		added = api.Member{ID: m.GetID(), Name: m.GetName(), PeerURLs: m.GetPeerURLs(), ClientURLs: m.GetClientURLs(), IsLearner: m.GetIsLearner()}
		return nil
	}, func(members []membership.Member, removed []uint64) error {
		if err := s.mayAddMember(members, learner); err != nil {
			return err
		}
		if err := peerURLTaken(members, peerURLs, 0); err != nil {
			return err
		}
		if learner {
			learners := 0
			for _, m := range members {
				if m.IsLearner {
					learners++
				}
			}
			if learners >= maxLearners {
				return api.ErrTooManyLearners
			}
		}
		id := newMemberID(peerURLs, s.cfg.InitialClusterToken, time.Now(), func(id uint64) bool {
			_, err := findMember(members, id)
			return err == nil || slices.Contains(removed, id)
		})
		typ := raftpb.ConfChangeType_ConfChangeAddNode
		if learner {
			typ = raftpb.ConfChangeType_ConfChangeAddLearnerNode
		}
		m := membership.Member{ID: id, PeerURLs: peerURLs, IsLearner: learner}
		if err := s.changeConf(ctx, typ, id, membership.Encode(m)); err != nil {
			return err
		}
		added = api.Member{ID: id, PeerURLs: peerURLs, IsLearner: learner}
		return nil
	})
	return added, err
}

// RemoveMember implements api.MemberSource.
func (s *Server) RemoveMember(ctx context.Context, id uint64) error {
	return s.decideOnLeader(ctx, func(cli pb.ClusterClient) error {
		_, err := cli.MemberRemove(ctx, &pb.MemberRemoveRequest{ID: id})
		return err
	}, func(members []membership.Member, _ []uint64) error {
		i, err := findMember(members, id)
		if err != nil {
			return err
		}
		if !members[i].IsLearner {
			if err := s.mayRemoveVoter(members, id); err != nil {
				return err
			}
		}
		return s.changeConf(ctx, raftpb.ConfChangeType_ConfChangeRemoveNode, id, nil)
	})
}

// UpdateMember implements api.MemberSource.
func (s *Server) UpdateMember(ctx context.Context, id uint64, peerURLs []string) error {
	return s.decideOnLeader(ctx, func(cli pb.ClusterClient) error {
		_, err := cli.MemberUpdate(ctx, &pb.MemberUpdateRequest{ID: id, PeerURLs: peerURLs})
		return err
	}, func(members []membership.Member, _ []uint64) error {
		i, err := findMember(members, id)
		if err != nil {
			return err
		}
		if err := peerURLTaken(members, peerURLs, id); err != nil {
			return err
		}
		m := members[i]
		m.PeerURLs = peerURLs
		return s.changeConf(ctx, raftpb.ConfChangeType_ConfChangeUpdateNode, id, membership.Encode(m))
	})
}

// PromoteMember implements api.MemberSource.
func (s *Server) PromoteMember(ctx context.Context, id uint64) error {
	return s.decideOnLeader(ctx, func(cli pb.ClusterClient) error {
		_, err := cli.MemberPromote(ctx, &pb.MemberPromoteRequest{ID: id})
		return err
	}, func(members []membership.Member, _ []uint64) error {
		i, err := findMember(members, id)
		if err != nil {
			return err
		}
		if !members[i].IsLearner {
			return api.ErrMemberNotLearner
		}
		p, err := s.leaderProgress()
		if err != nil {
			return err
		}
		if float64(p.Members[id].Match) < learnerReadyFraction*float64(p.LastIndex) {
			return api.ErrLearnerNotReady
		}
		if voters, started := countVoters(members); started+1 < (voters+1)/2+1 {
			// The learner counts as started: it is in sync.
			return api.ErrNotEnoughStarted
		}
		m := members[i]
		m.IsLearner = false
		return s.changeConf(ctx, raftpb.ConfChangeType_ConfChangeAddNode, id, membership.Encode(m))
	})
}

// countVoters counts the voters among members, and those of them that have
// started (published their name, as etcd's members do when they start).
func countVoters(members []membership.Member) (voters, started int) {
	for _, m := range members {
		if m.IsLearner {
			continue
		}
		voters++
		if m.Name != "" {
			started++
		}
	}
	return voters, started
}

// mayAddMember refuses a new member, learner or voter, that could cost the
// cluster its quorum: a voter while fewer members than a quorum of the grown
// cluster have started, and any member while the active voters, the new one
// counted as down until it catches up, would not form a quorum of the grown
// cluster. A lone member may always take a second one, the way out of a
// restore from backup: etcd allows it too.
func (s *Server) mayAddMember(members []membership.Member, learner bool) error {
	voters, started := countVoters(members)
	if voters == 1 {
		return nil
	}
	if !learner && started < (voters+1)/2+1 {
		return api.ErrNotEnoughStarted
	}
	p, err := s.leaderProgress()
	if err != nil {
		return err
	}
	active := 0
	for _, m := range members {
		if !m.IsLearner && p.Members[m.ID].RecentActive {
			active++
		}
	}
	if active < (voters+1)/2+1 {
		return api.ErrUnhealthy
	}
	return nil
}

// mayRemoveVoter refuses to remove voter id when the started voters left, or
// (unless id is down: it is not part of the active quorum then) the active
// voters left, would not form a quorum of the shrunk cluster.
func (s *Server) mayRemoveVoter(members []membership.Member, id uint64) error {
	others := slices.DeleteFunc(slices.Clone(members), func(m membership.Member) bool { return m.ID == id })
	voters, started := countVoters(others)
	if started < voters/2+1 {
		return api.ErrNotEnoughStarted
	}
	p, err := s.leaderProgress()
	if err != nil {
		return err
	}
	if !p.Members[id].RecentActive {
		return nil
	}
	active := 0
	for _, m := range others {
		if !m.IsLearner && p.Members[m.ID].RecentActive {
			active++
		}
	}
	if active < voters/2+1 {
		return api.ErrUnhealthy
	}
	return nil
}

// leaderProgress is the leader's view of the members' logs; this member must
// be the leader.
func (s *Server) leaderProgress() (*raftnode.Progress, error) {
	if p := s.node.Progress(); p != nil {
		return p, nil
	}
	if s.node.Leader() == s.memberID {
		return nil, api.ErrUnhealthy // leading, but not yet for a tick
	}
	return nil, api.ErrNotLeader
}

// changeConf proposes a configuration change and waits until it is applied
// here.
func (s *Server) changeConf(ctx context.Context, typ raftpb.ConfChangeType, id uint64, context []byte) error {
	reqID := s.ids.next()
	cc := &raftpb.ConfChange{Type: &typ, NodeId: &id, Context: context}
	_, err := s.await(ctx, reqID, func() error { return s.node.ProposeConfChange(reqID, cc) })
	if err != nil {
		return err
	}
	s.logger.Info("configuration changed", "change", typ.String(), "member", fmt.Sprintf("%x", id))
	return nil
}

// catchUp returns once this member has applied everything committed now: a
// change the leader made is then in its member records too. A change that
// removed the leader ends its leadership: the read is asked again of the
// next one.
func (s *Server) catchUp(ctx context.Context) error {
	for {
		err := s.node.ReadIndex(ctx)
		if !errors.Is(err, raftnode.ErrLeaderChanged) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(s.cfg.HeartbeatInterval):
		}
	}
}

// leaderCluster returns a Cluster client of the leader when this member is
// not the leader (done closes it), nil when it is.
func (s *Server) leaderCluster(ctx context.Context) (pb.ClusterClient, func(), error) {
	lead := s.node.Leader()
	if lead == 0 {
		return nil, nil, api.ErrNoLeader
	}
	if lead == s.memberID {
		return nil, nil, nil
	}
	m, found, err := membership.Get(s.db, lead)
	if err != nil {
		return nil, nil, err
	}
	if !found || len(m.ClientURLs) == 0 {
		return nil, nil, fmt.Errorf("%w: the leader %x has not published its client URLs", api.ErrNoLeader, lead)
	}
	u, err := url.Parse(m.ClientURLs[0])
	if err != nil {
		return nil, nil, fmt.Errorf("leader %x's client URL %q: %w", lead, m.ClientURLs[0], err)
	}
	conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("dial the leader %x: %w", lead, err)
	}
	return pb.NewClusterClient(conn), func() { _ = conn.Close() }, nil
}

// MoveLeader implements api.StatusSource.
func (s *Server) MoveLeader(ctx context.Context, to uint64) error {
	if s.node.Leader() != s.memberID {
		return api.ErrNotLeader
	}
	m, found, err := membership.Get(s.db, to)
	if err != nil {
		return err
	}
	if !found || m.IsLearner {
		return api.ErrBadLeaderTransferee
	}
	if to == s.memberID {
		return nil
	}
	if err := s.node.TransferLeadership(to); err != nil {
		return err
	}
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for s.node.Leader() != to {
		select {
		case <-ctx.Done():
			return api.ErrLeaderTransferTimeout
		case <-s.stopCtx.Done():
			return raftnode.ErrStopped
		case <-t.C:
		}
	}
	s.logger.Info("leadership moved", "to", fmt.Sprintf("%x", to))
	return nil
}

// handOffLeadership moves leadership, when this member leads, to the voter
// that is active and furthest along, before this member stops, as etcd does
// on a graceful stop: the cluster then has a leader again within a round trip
// instead of after an election timeout with no leader. Raft gives a transfer
// up after an election timeout; so does this.
func (s *Server) handOffLeadership() {
	p := s.node.Progress()
	if p == nil {
		return // not leading
	}
	var to, match uint64
	for id, m := range p.Members {
		if id != s.memberID && !m.IsLearner && m.RecentActive && (to == 0 || m.Match > match) {
			to, match = id, m.Match
		}
	}
	if to == 0 {
		return
	}
	start := time.Now()
	if err := s.node.TransferLeadership(to); err != nil {
		s.logger.Warn("could not hand leadership over before stopping", "to", fmt.Sprintf("%x", to), "err", err)
		return
	}
	// Until the successor is known here: the proposals followers sent
	// this member meanwhile are held, and go to it then.
	deadline := start.Add(s.cfg.ElectionTimeout + 2*s.cfg.HeartbeatInterval)
	for lead := s.node.Leader(); (lead == s.memberID || lead == 0) && time.Now().Before(deadline); lead = s.node.Leader() {
		time.Sleep(s.cfg.HeartbeatInterval / 4)
	}
	if lead := s.node.Leader(); lead != s.memberID && lead != 0 {
		// What the raft loop forwarded to it is in the transport's
		// queues: a heartbeat's time to send it before they close.
		time.Sleep(s.cfg.HeartbeatInterval)
		s.logger.Info("handed leadership over before stopping", "to", fmt.Sprintf("%x", lead), "took", time.Since(start).Round(time.Millisecond).String())
		return
	}
	s.logger.Warn("could not hand leadership over before stopping", "to", fmt.Sprintf("%x", to), "waited", time.Since(start).Round(time.Millisecond).String())
}

// newMemberID derives the ID of a member added at now from its peer URLs and
// the cluster token, as etcd does, skipping IDs taken (by a member, or by a
// removed one).
func newMemberID(peerURLs []string, token string, now time.Time, taken func(uint64) bool) uint64 {
	us := slices.Clone(peerURLs)
	slices.Sort(us)
	for salt := now.Unix(); ; salt++ {
		h := sha256.New()
		h.Write([]byte(strings.Join(us, ",") + "\x00" + token + "\x00"))
		_ = binary.Write(h, binary.BigEndian, salt)
		id := binary.BigEndian.Uint64(h.Sum(nil)[:8])
		if id != 0 && !taken(id) {
			return id
		}
	}
}
