package mvcc

import (
	"bytes"
	"fmt"
	"math"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// rangePlan is a validated range request: what to scan, at which revision, in
// which key space. Planning is separate from scanning so that committed reads
// can plan and open their iterator under the store's view lock, then scan
// without it.
type rangePlan struct {
	sp         span
	readRev    int64
	historical bool // readRev is older than the current revision
	limit      int  // keys to fetch; 0 = all
	countOnly  bool
}

// planRange checks req's revision against the current and compacted
// revisions and decides how much to fetch, as etcd does: filters and custom
// sorts fetch everything, a plain limit fetches one extra key to learn "more".
func planRange(req *pb.RangeRequest, curRev, compactRev int64) (rangePlan, error) {
	rev := req.Revision
	if rev > curRev {
		return rangePlan{}, ErrFutureRev
	}
	if rev <= 0 {
		rev = curRev
	}
	if rev < compactRev {
		return rangePlan{}, ErrCompacted
	}
	limit := req.Limit
	if req.SortOrder != pb.RangeRequest_NONE || req.MinModRevision != 0 || req.MaxModRevision != 0 ||
		req.MinCreateRevision != 0 || req.MaxCreateRevision != 0 {
		limit = 0
	}
	switch {
	case limit < 0:
		limit = 0 // as etcd reads it: no limit
	case limit > 0 && limit < math.MaxInt64:
		limit++
	}
	return rangePlan{
		sp:         newSpan(req.Key, req.RangeEnd),
		readRev:    rev,
		historical: rev < curRev,
		limit:      int(limit),
		countOnly:  req.CountOnly,
	}, nil
}

// cursors are the iterators a plan reads: one over its span in the latest
// space and, for a read at a past revision, one over the span in history.
// Both are nil for a span that cannot hold a key.
type cursors struct {
	latest, history *pebble.Iterator
}

// open returns the cursors over the plan's span that its revision needs.
func (p rangePlan) open(r pebble.Reader) (cursors, error) {
	if p.sp.empty() {
		return cursors{}, nil
	}
	lower, upper := p.sp.latestBounds()
	latest, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return cursors{}, fmt.Errorf("mvcc: open iterator: %w", err)
	}
	if !p.historical {
		return cursors{latest: latest}, nil
	}
	lower, upper = p.sp.historyBounds()
	history, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		_ = latest.Close()
		return cursors{}, fmt.Errorf("mvcc: open iterator: %w", err)
	}
	return cursors{latest: latest, history: history}, nil
}

// walk consumes and closes c, visiting the plan's span as of its revision
// in key order (descending when reverse is set).
func (p rangePlan) walk(c cursors, reverse bool, visit visitFunc) error {
	switch {
	case c.latest == nil:
		return nil
	case c.history == nil:
		return walkLatest(c.latest, reverse, visit)
	}
	return walkAt(c.latest, c.history, p.readRev, reverse, visit)
}

// pointLatest reports whether the plan reads one key at the current revision.
func (p rangePlan) pointLatest() bool { return p.sp.end == nil && !p.sp.fromKey && !p.historical }

// answerPoint shapes the answer of a point read that found kv (or nil):
// the same answer run would give for a scan that met at most that one key.
func (p rangePlan) answerPoint(req *pb.RangeRequest, curRev int64, kv *mvccpb.KeyValue) *pb.RangeResponse {
	sc := scan{limit: p.limit, countOnly: p.countOnly}
	if kv != nil {
		sc.count = 1
		if sc.wantMore() {
			sc.kvs = []*mvccpb.KeyValue{kv}
		}
	}
	return p.shape(sc, req, curRev)
}

// run scans c (which it closes) and shapes the answer: filters, sort,
// limit, keys_only.
func (p rangePlan) run(c cursors, req *pb.RangeRequest, curRev int64) (*pb.RangeResponse, error) {
	sc := scan{limit: p.limit, countOnly: p.countOnly}
	if err := p.walk(c, false, sc.visit); err != nil {
		return nil, err
	}
	return p.shape(sc, req, curRev), nil
}

// shape turns what a scan collected into the answer: filters, sort, limit,
// keys_only.
func (p rangePlan) shape(sc scan, req *pb.RangeRequest, curRev int64) *pb.RangeResponse {
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: curRev}, Count: int64(sc.count)}
	if p.countOnly {
		return resp
	}
	kvs := pruneKVs(sc.kvs, req)
	sortKVs(kvs, req)
	if req.Limit > 0 && len(kvs) > int(req.Limit) {
		kvs = kvs[:req.Limit]
		resp.More = true
	}
	if req.KeysOnly {
		for _, kv := range kvs {
			kv.Value = nil
		}
	}
	resp.Kvs = kvs
	return resp
}

// pruneKVs drops the versions outside req's create and mod revision filters.
// Count is not affected: etcd counts the keys in the range, not the matches.
func pruneKVs(kvs []*mvccpb.KeyValue, req *pb.RangeRequest) []*mvccpb.KeyValue {
	if req.MinModRevision == 0 && req.MaxModRevision == 0 && req.MinCreateRevision == 0 && req.MaxCreateRevision == 0 {
		return kvs
	}
	out := kvs[:0]
	for _, kv := range kvs {
		switch {
		case req.MaxModRevision != 0 && kv.ModRevision > req.MaxModRevision:
		case req.MinModRevision != 0 && kv.ModRevision < req.MinModRevision:
		case req.MaxCreateRevision != 0 && kv.CreateRevision > req.MaxCreateRevision:
		case req.MinCreateRevision != 0 && kv.CreateRevision < req.MinCreateRevision:
		default:
			out = append(out, kv)
		}
	}
	return out
}

// sortKVs orders kvs as req asks. Scans return keys in ascending order, so
// ascending by key needs no work; a target other than key with no order
// means ascending. The sort is sort.Sort on purpose: it is not stable, and
// clients see the order it leaves equal elements in, which must match etcd's.
func sortKVs(kvs []*mvccpb.KeyValue, req *pb.RangeRequest) {
	_, order := sortOrder(req)
	if order == pb.RangeRequest_NONE {
		return
	}
	var by sort.Interface
	switch req.SortTarget {
	case pb.RangeRequest_KEY:
		by = kvsBy{kvs, func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }}
	case pb.RangeRequest_VERSION:
		by = kvsBy{kvs, func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }}
	case pb.RangeRequest_CREATE:
		by = kvsBy{kvs, func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision < b.CreateRevision }}
	case pb.RangeRequest_MOD:
		by = kvsBy{kvs, func(a, b *mvccpb.KeyValue) bool { return a.ModRevision < b.ModRevision }}
	case pb.RangeRequest_VALUE:
		by = kvsBy{kvs, func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }}
	default:
		return // rejected by request validation before it gets here
	}
	if order == pb.RangeRequest_DESCEND {
		by = sort.Reverse(by)
	}
	sort.Sort(by)
}

// sortOrder normalises a request's sort: a target other than key with no order
// means ascending, and ascending by key is the order scans produce anyway
// (NONE).
func sortOrder(req *pb.RangeRequest) (pb.RangeRequest_SortTarget, pb.RangeRequest_SortOrder) {
	order := req.SortOrder
	switch {
	case req.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE:
		order = pb.RangeRequest_ASCEND
	case req.SortTarget == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND:
		order = pb.RangeRequest_NONE
	}
	return req.SortTarget, order
}

type kvsBy struct {
	kvs  []*mvccpb.KeyValue
	less func(a, b *mvccpb.KeyValue) bool
}

func (k kvsBy) Len() int           { return len(k.kvs) }
func (k kvsBy) Less(i, j int) bool { return k.less(k.kvs[i], k.kvs[j]) }
func (k kvsBy) Swap(i, j int)      { k.kvs[i], k.kvs[j] = k.kvs[j], k.kvs[i] }
