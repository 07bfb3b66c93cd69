package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/mvcc"
)

// AutoCompaction is what --auto-compaction-mode and
// --auto-compaction-retention ask for. The zero value compacts nothing.
type AutoCompaction struct {
	// Period, in periodic mode, is how much history (in time) to keep.
	Period time.Duration
	// Revisions, in revision mode, is how many revisions to keep.
	Revisions int64
	// Interval is how often revision mode checks; 0 means etcd's five
	// minutes. Periodic mode derives its pace from Period, as etcd's does.
	Interval time.Duration
}

// ParseAutoCompaction reads etcd's two flags. In periodic mode the retention
// is a duration ("30m", "72h") or a number of hours; in revision mode a
// number of revisions. A retention of 0 turns auto-compaction off.
func ParseAutoCompaction(mode, retention string) (AutoCompaction, error) {
	switch mode {
	case "periodic", "":
		if n, err := strconv.ParseInt(retention, 10, 64); err == nil {
			if n < 0 {
				return AutoCompaction{}, fmt.Errorf("--auto-compaction-retention %q must not be negative", retention)
			}
			return AutoCompaction{Period: time.Duration(n) * time.Hour}, nil
		}
		d, err := time.ParseDuration(retention)
		if err != nil || d < 0 {
			return AutoCompaction{}, fmt.Errorf("--auto-compaction-retention %q: want a duration (e.g. 1h, 30m) or a number of hours", retention)
		}
		return AutoCompaction{Period: d}, nil
	case "revision":
		n, err := strconv.ParseInt(retention, 10, 64)
		if err != nil || n < 0 {
			return AutoCompaction{}, fmt.Errorf("--auto-compaction-retention %q: want a number of revisions in revision mode", retention)
		}
		return AutoCompaction{Revisions: n}, nil
	}
	return AutoCompaction{}, fmt.Errorf("--auto-compaction-mode %q: want periodic or revision", mode)
}

func (a AutoCompaction) enabled() bool { return a.Period > 0 || a.Revisions > 0 }

// revisionSample is the store's revision at a moment.
type revisionSample struct {
	at  time.Time
	rev int64
}

// autoCompact proposes compactions while this member leads, as etcd's
// compactor does: in periodic mode it samples the revision every tenth of
// min(Period, 1h) and, every min(Period, 1h), compacts at the newest revision
// sampled at least Period ago, so that Period of history is kept; in
// revision mode it compacts at current - Revisions every Interval. A
// compaction goes through the log like a client's, and a follower forgets
// its samples: a new leader starts sampling afresh.
func (s *Server) autoCompact() {
	defer s.serveWG.Done()
	cfg := s.cfg.AutoCompaction
	if !cfg.enabled() {
		return
	}
	tick, every := cfg.Interval, cfg.Interval
	if cfg.Period > 0 {
		every = min(cfg.Period, time.Hour)
		tick = every / 10
	} else if tick == 0 {
		tick, every = 5*time.Minute, 5*time.Minute
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var samples []revisionSample
	var lastTry time.Time
	for {
		select {
		case <-s.stopCtx.Done():
			return
		case now := <-t.C:
			if s.node.Leader() != s.memberID {
				samples, lastTry = nil, time.Time{}
				continue
			}
			cur := s.kv.Rev()
			if lastTry.IsZero() {
				lastTry = now
			}
			var target int64
			if cfg.Period > 0 {
				samples = append(samples, revisionSample{at: now, rev: cur})
				// Keep the newest sample at least Period old, and
				// everything after it.
				cut := 0
				for i, sm := range samples {
					if now.Sub(sm.at) >= cfg.Period {
						cut = i
					}
				}
				samples = samples[cut:]
				if now.Sub(samples[0].at) >= cfg.Period {
					target = samples[0].rev
				}
			} else {
				target = cur - cfg.Revisions
			}
			if now.Sub(lastTry) < every || target <= 0 || target <= s.kv.CompactRev() {
				continue
			}
			lastTry = now
			s.proposeCompaction(target)
		}
	}
}

func (s *Server) proposeCompaction(rev int64) {
	ctx, cancel := context.WithTimeout(s.stopCtx, s.requestTimeout())
	defer cancel()
	_, err := s.Propose(ctx, &pb.InternalRaftRequest{Compaction: &pb.CompactionRequest{Revision: rev}})
	switch {
	case err == nil:
		s.logger.Info("auto-compacted", "revision", rev)
	case errors.Is(err, mvcc.ErrCompacted), s.stopCtx.Err() != nil:
	default:
		s.logger.Warn("auto-compaction failed; trying again at the next interval", "revision", rev, "err", err)
	}
}
