package server

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/api"
	"github.com/plinthdb/plinth/internal/storage"
)

// DefaultQuotaBackendBytes is the quota when --quota-backend-bytes is 0:
// etcd's largest recommended quota. plinth has no mmap ceiling to protect,
// so the quota is only the alarm's threshold.
const DefaultQuotaBackendBytes = 8 << 30

// dbSizeInterval is how often the member measures its database for the quota:
// measuring on every write would cost more than the write.
const dbSizeInterval = 250 * time.Millisecond

// quotaState is the member's side of its storage quota.
type quotaState struct {
	// dbSize is the database's whole disk usage as last measured: every
	// file, the Raft log's and the WAL's included. Status reports it.
	dbSize atomic.Int64
	// dataSize is what the state machine takes, as last measured: the
	// quota's measure (see measure). Status reports it as in use.
	dataSize atomic.Int64
	raising  atomic.Bool // a NOSPACE activation is being proposed
}

// measure records the database's sizes now. The quota measures the state
// machine as etcd's measures its backend, without the Raft log (etcd keeps
// its log in a WAL beside the backend): Pebble's estimate of the files that
// hold the state machine's key spaces, plus the live data of the WAL, which
// the memtables hold and no file does yet (state machine and log alike).
// Deleted data counts until Pebble's compactions drop it; Defragment drops
// it at once.
func (s *Server) measure() {
	m := s.db.Metrics()
	s.quota.dbSize.Store(int64(m.DiskSpaceUsage()))
	data := m.WAL.Size
	for _, span := range storage.StateMachineSpans {
		n, err := s.db.EstimateDiskUsage(span.Start, span.End)
		if err != nil {
			s.logger.Warn("estimate the state machine's size", "err", err)
			return
		}
		data += n
	}
	s.quota.dataSize.Store(int64(data))
}

func (s *Server) quotaBytes() int64 {
	if s.cfg.QuotaBackendBytes > 0 {
		return s.cfg.QuotaBackendBytes
	}
	return DefaultQuotaBackendBytes
}

// measureDBSize measures the database now, and then every dbSizeInterval
// until the member stops.
func (s *Server) measureDBSize() {
	defer s.serveWG.Done()
	t := time.NewTicker(dbSizeInterval)
	defer t.Stop()
	for {
		s.measure()
		select {
		case <-s.stopCtx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckQuota implements api.QuotaChecker: a write of cost bytes that would
// take the database past its quota is refused, and raises a NOSPACE alarm
// for this member, as etcd's quota does. Once the alarm is active every
// member refuses such writes in its apply loop, whatever its own size.
func (s *Server) CheckQuota(cost int) error {
	if s.quota.dataSize.Load()+int64(cost) <= s.quotaBytes() {
		return nil
	}
	s.raiseNoSpace()
	return api.ErrNoSpace
}

// raiseNoSpace proposes this member's NOSPACE alarm, unless it is active or
// being proposed.
func (s *Server) raiseNoSpace() {
	for _, a := range s.applier.Alarms().List() {
		if a.MemberID == s.memberID && a.Alarm == pb.AlarmType_NOSPACE {
			return
		}
	}
	if !s.quota.raising.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.quota.raising.Store(false)
		ctx, cancel := context.WithTimeout(s.stopCtx, s.requestTimeout())
		defer cancel()
		req := &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: s.memberID, Alarm: pb.AlarmType_NOSPACE}
		if _, err := s.Propose(ctx, &pb.InternalRaftRequest{Alarm: req}); err != nil && s.stopCtx.Err() == nil {
			s.logger.Warn("could not raise the NOSPACE alarm", "err", err)
		}
	}()
}

// Alarms implements api.AlarmSource.
func (s *Server) Alarms() []*pb.AlarmMember { return s.applier.Alarms().List() }

// Defragment implements api.Defragmenter. Pebble needs no defragmentation:
// space that deletes and compactions free returns as its own compactions
// rewrite the files holding it. An operator who has just freed space to
// clear a NOSPACE alarm wants it back now, so Defragment compacts the whole
// database (every level, the memtable flushed first) and measures it again.
// Like etcd's, it is heavy: it rewrites every file.
func (s *Server) Defragment(ctx context.Context) error {
	start := time.Now()
	if err := s.db.Compact(ctx, []byte{0x00}, []byte{0xff}, true); err != nil {
		return fmt.Errorf("defragment: %w", err)
	}
	before := s.quota.dataSize.Load()
	s.measure()
	s.logger.Info("defragmented", "took", time.Since(start), "data-bytes-before", before, "data-bytes-after", s.quota.dataSize.Load())
	return nil
}
