package server

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/plinthdb/plinth/internal/membership"
	"github.com/plinthdb/plinth/internal/mvcc"
)

// CorruptCheck configures the comparisons of members' hashes that find a
// member whose data differs from the others' (etcd's corruption checks).
type CorruptCheck struct {
	// Initial compares this member's HashKV with its peers' before it
	// serves clients, and refuses to start on a difference.
	Initial bool
	// Period, when not 0, is how often the leader compares every member's
	// HashKV at its current revision, raising CORRUPT for the members
	// that differ.
	Period time.Duration
	// CompactPeriod, when not 0, is how often the leader compares every
	// member's HashKV at the latest compaction revision.
	CompactPeriod time.Duration
}

// ErrCorruptData stops a member whose data differs from its peers' at start.
var ErrCorruptData = errors.New("found data inconsistency with peers")

// comparableHashes hashes this member's store at rev and asks every other
// member with a client URL for its hash at rev, keeping the answers of those
// that kept the same history (the same compaction revision): only those can
// be compared. Members that cannot answer (down, behind, compacted past rev)
// are left out: a check compares the members that can.
func (s *Server) comparableHashes(ctx context.Context, rev int64) (mine mvcc.KVHash, peers map[uint64]uint32, err error) {
	if mine, err = s.kv.HashKV(rev); err != nil {
		return mvcc.KVHash{}, nil, err
	}
	members, _, err := membership.List(s.db)
	if err != nil {
		return mvcc.KVHash{}, nil, err
	}
	peers = map[uint64]uint32{}
	for _, m := range members {
		if m.ID == s.memberID || len(m.ClientURLs) == 0 {
			continue
		}
		resp, err := hashKVOf(ctx, m.ClientURLs[0], rev)
		if err != nil {
			s.logger.Debug("corruption check: no hash from member", "member", fmt.Sprintf("%x", m.ID), "err", err)
			continue
		}
		if resp.CompactRevision == mine.CompactRevision {
			peers[m.ID] = resp.Hash
		}
	}
	return mine, peers, nil
}

func hashKVOf(ctx context.Context, clientURL string, rev int64) (*pb.HashKVResponse, error) {
	u, err := url.Parse(clientURL)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, memberCheckKey, "hashkv")
	return pb.NewMaintenanceClient(conn).HashKV(ctx, &pb.HashKVRequest{Revision: rev})
}

// checkInitialHashes compares this member's hash with its peers' at its
// revision, before it serves: a member whose data was damaged while it was
// down refuses to start, as etcd's does with --initial-corrupt-check.
func (s *Server) checkInitialHashes() error {
	rev := s.kv.Rev()
	ctx, cancel := context.WithTimeout(s.stopCtx, 10*time.Second)
	defer cancel()
	mine, peers, err := s.comparableHashes(ctx, rev)
	if err != nil {
		return fmt.Errorf("initial corruption check: %w", err)
	}
	for id, h := range peers {
		if h != mine.Hash {
			return fmt.Errorf("%w: at revision %d this member hashes %x, member %x hashes %x (compaction %d)",
				ErrCorruptData, rev, mine.Hash, id, h, mine.CompactRevision)
		}
	}
	s.logger.Info("initial corruption check passed", "revision", rev, "hash", fmt.Sprintf("%x", mine.Hash))
	return nil
}

// checkHashesPeriodically runs the leader's corruption checks until the
// member stops.
func (s *Server) checkHashesPeriodically() {
	defer s.serveWG.Done()
	cfg := s.cfg.CorruptCheck
	var current, compacted <-chan time.Time
	if cfg.Period > 0 {
		t := time.NewTicker(cfg.Period)
		defer t.Stop()
		current = t.C
	}
	if cfg.CompactPeriod > 0 {
		t := time.NewTicker(cfg.CompactPeriod)
		defer t.Stop()
		compacted = t.C
	}
	if current == nil && compacted == nil {
		return
	}
	lastCompactChecked := int64(-1)
	for {
		select {
		case <-s.stopCtx.Done():
			return
		case <-current:
			if s.node.Leader() == s.memberID {
				s.compareHashes(s.kv.Rev())
			}
		case <-compacted:
			if c := s.kv.CompactRev(); c > 0 && c != lastCompactChecked && s.node.Leader() == s.memberID {
				lastCompactChecked = c
				s.compareHashes(c)
			}
		}
	}
}

// compareHashes compares every member's hash at rev (those with the leader's
// compaction revision), takes the hash most members share (the leader's on
// a tie) for the right one, and raises CORRUPT for every member that hashes
// otherwise.
func (s *Server) compareHashes(rev int64) {
	ctx, cancel := context.WithTimeout(s.stopCtx, 10*time.Second)
	defer cancel()
	mine, hashes, err := s.comparableHashes(ctx, rev)
	if err != nil {
		if !errors.Is(err, mvcc.ErrCompacted) {
			s.logger.Warn("corruption check: hash", "revision", rev, "err", err)
		}
		return
	}
	hashes[s.memberID] = mine.Hash
	votes := map[uint32]int{}
	for _, h := range hashes {
		votes[h]++
	}
	right := mine.Hash
	for h, n := range votes {
		if n > votes[right] {
			right = h
		}
	}
	for id, h := range hashes {
		if h == right {
			continue
		}
		s.logger.Error("corruption check: member's data differs", "member", fmt.Sprintf("%x", id), "revision", rev, "hash", fmt.Sprintf("%x", h), "others", fmt.Sprintf("%x", right))
		req := &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: id, Alarm: pb.AlarmType_CORRUPT}
		if _, err := s.Propose(ctx, &pb.InternalRaftRequest{Alarm: req}); err != nil {
			s.logger.Warn("corruption check: could not raise CORRUPT", "member", fmt.Sprintf("%x", id), "err", err)
		}
	}
}
