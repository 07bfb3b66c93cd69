package mvcc

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// StreamChunkBytes bounds the keys and values one RangeStream chunk carries
// (a single larger pair still travels alone).
const StreamChunkBytes = 1 << 20

// RangeStream answers req as Range does, but in chunks handed to send, all
// read at one revision fixed when the stream starts; header, more and count
// travel on the last chunk. Memory stays bounded by the chunk size whatever
// the range: key order is streamed straight from a Pebble iterator (backwards
// for descending keys), and other sort orders are produced chunk by chunk, each
// pass over the range selecting the next chunk's worth. Ties in a sort order
// are broken by key, ascending for ASCEND and descending for DESCEND.
func (s *Store) RangeStream(req *pb.RangeRequest, send func(*pb.RangeResponse) error) error {
	s.viewMu.RLock()
	curRev := s.rev
	plan, err := planRange(req, curRev, s.compactRev)
	if err != nil {
		s.viewMu.RUnlock()
		return err
	}
	snap := s.db.NewSnapshot()
	s.viewMu.RUnlock()
	defer func() { _ = snap.Close() }()

	st := &stream{snap: snap, plan: plan, req: req, send: send}
	last := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: curRev}}
	target, order := sortOrder(req)
	switch {
	case order == pb.RangeRequest_NONE:
		err = st.inKeyOrder(false, last)
	case target == pb.RangeRequest_KEY:
		err = st.inKeyOrder(true, last)
	default:
		err = st.sorted(target, order, last)
	}
	if err != nil {
		return err
	}
	last.Count = int64(st.count)
	if req.KeysOnly {
		for _, kv := range last.Kvs {
			kv.Value = nil
		}
	}
	return send(last)
}

type stream struct {
	snap  *pebble.Snapshot
	plan  rangePlan
	req   *pb.RangeRequest
	send  func(*pb.RangeResponse) error
	count int // keys in the range, matching the filters or not
}

// walk visits the range at the plan's revision in key order.
func (st *stream) walk(reverse bool, visit visitFunc) error {
	c, err := st.plan.open(st.snap)
	if err != nil {
		return err
	}
	return st.plan.walk(c, reverse, visit)
}

// match counts a version the walk met and returns it if the answer may
// carry it: nil for count_only requests and for versions outside the
// request's revision filters.
func (st *stream) match(key, v []byte, keysOnly bool) (*mvccpb.KeyValue, error) {
	st.count++
	if st.req.CountOnly {
		return nil, nil
	}
	var rec record
	if err := decodeRecord(v, &rec); err != nil {
		return nil, fmt.Errorf("mvcc: key %q: %w", key, err)
	}
	kv := rec.keyValue(key, keysOnly)
	if len(pruneKVs([]*mvccpb.KeyValue{kv}, st.req)) == 0 {
		return nil, nil
	}
	return kv, nil
}

// inKeyOrder streams the range in key order, sending full chunks as it goes
// and leaving the rest in last.
func (st *stream) inKeyOrder(reverse bool, last *pb.RangeResponse) error {
	limit := int(st.req.Limit)
	emitted, size := 0, 0
	var chunk []*mvccpb.KeyValue
	err := st.walk(reverse, func(key, v []byte) (bool, error) {
		kv, err := st.match(key, v, st.req.KeysOnly)
		if kv == nil || err != nil {
			return err == nil, err
		}
		if limit > 0 && emitted == limit {
			last.More = true
			return true, nil // keep counting
		}
		chunk = append(chunk, kv)
		emitted++
		size += len(kv.Key) + len(kv.Value)
		if size >= StreamChunkBytes {
			if err := st.send(&pb.RangeResponse{Kvs: chunk}); err != nil {
				return false, err
			}
			chunk, size = nil, 0
		}
		return true, nil
	})
	last.Kvs = chunk
	return err
}

// sorted streams the range in an order other than by key. Each pass walks the
// whole range and keeps the smallest chunk's worth of versions that sort after
// the last one sent, so memory never holds more than two chunks.
func (st *stream) sorted(target pb.RangeRequest_SortTarget, order pb.RangeRequest_SortOrder, last *pb.RangeResponse) error {
	less := sortedLess(target, order)
	limit := int(st.req.Limit)
	var prev *mvccpb.KeyValue // the last version sent
	emitted := 0
	for {
		var picked []*mvccpb.KeyValue
		size := 0
		st.count = 0
		matching := 0
		err := st.walk(false, func(key, v []byte) (bool, error) {
			kv, err := st.match(key, v, false)
			if kv == nil || err != nil {
				return err == nil, err
			}
			matching++
			if prev != nil && !less(prev, kv) {
				return true, nil
			}
			picked = append(picked, kv)
			size += len(kv.Key) + len(kv.Value)
			if size >= 2*StreamChunkBytes {
				// Keep the smallest half; it still holds a full chunk.
				slices.SortFunc(picked, cmpOf(less))
				picked, size = truncateChunk(picked)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		if st.req.CountOnly {
			return nil
		}
		slices.SortFunc(picked, cmpOf(less))
		picked, _ = truncateChunk(picked)
		if limit > 0 && emitted+len(picked) >= limit {
			picked = picked[:limit-emitted]
			last.More = matching > limit
			last.Kvs = stripValues(picked, st.req.KeysOnly)
			return nil
		}
		if emitted+len(picked) == matching {
			last.Kvs = stripValues(picked, st.req.KeysOnly)
			return nil
		}
		emitted += len(picked)
		prev = picked[len(picked)-1]
		if err := st.send(&pb.RangeResponse{Kvs: stripValues(picked, st.req.KeysOnly)}); err != nil {
			return err
		}
	}
}

// truncateChunk keeps the first versions of sorted kvs up to one chunk's size.
func truncateChunk(kvs []*mvccpb.KeyValue) ([]*mvccpb.KeyValue, int) {
	size := 0
	for i, kv := range kvs {
		size += len(kv.Key) + len(kv.Value)
		if size >= StreamChunkBytes {
			return kvs[:i+1], size
		}
	}
	return kvs, size
}

func stripValues(kvs []*mvccpb.KeyValue, keysOnly bool) []*mvccpb.KeyValue {
	if keysOnly {
		for _, kv := range kvs {
			kv.Value = nil
		}
	}
	return kvs
}

// sortedLess orders versions by target, then by key, both in order's
// direction: a total order, so passes can resume after the last one sent.
func sortedLess(target pb.RangeRequest_SortTarget, order pb.RangeRequest_SortOrder) func(a, b *mvccpb.KeyValue) bool {
	field := func(a, b *mvccpb.KeyValue) int {
		switch target {
		case pb.RangeRequest_VERSION:
			return compareInt(a.Version, b.Version)
		case pb.RangeRequest_CREATE:
			return compareInt(a.CreateRevision, b.CreateRevision)
		case pb.RangeRequest_MOD:
			return compareInt(a.ModRevision, b.ModRevision)
		case pb.RangeRequest_VALUE:
			return bytes.Compare(a.Value, b.Value)
		}
		return 0
	}
	return func(a, b *mvccpb.KeyValue) bool {
		c := field(a, b)
		if c == 0 {
			c = bytes.Compare(a.Key, b.Key)
		}
		if order == pb.RangeRequest_DESCEND {
			return c > 0
		}
		return c < 0
	}
}

func cmpOf(less func(a, b *mvccpb.KeyValue) bool) func(a, b *mvccpb.KeyValue) int {
	return func(a, b *mvccpb.KeyValue) int {
		switch {
		case less(a, b):
			return -1
		case less(b, a):
			return 1
		}
		return 0
	}
}
