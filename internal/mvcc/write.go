package mvcc

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/plinthdb/plinth/internal/storage"
)

// errPartialTxn marks a transaction that failed with writes staged: a broken
// invariant that stops the member rather than commit half a transaction.
var errPartialTxn = errors.New("mvcc: partial transaction")

// LeaseExists tells a write whether a lease ID is live. mvcc stores a key's
// lease but does not know leases; the caller (apply) answers for it.
type LeaseExists func(id int64) bool

// LeaseChanged is told of every key whose lease a write changes: from old to
// new, either of which may be 0 (no lease). A delete of a key with a lease
// moves it to 0. The caller (apply) keeps the lease -> keys index with it,
// staged in the same batch; an error fails the write, and stops the member.
type LeaseChanged func(key []byte, old, new int64) error

// Batch collects the writes of consecutive requests into one Pebble batch.
// Each request sees the effects of the requests before it in the same batch.
// Nothing is visible to readers until Commit.
type Batch struct {
	s          *Store
	b          *pebble.Batch // indexed: reads see the batch's own writes
	rev        int64         // revision after the requests staged so far
	compactRev int64
	compactTo  int64  // a compaction staged in this batch, -1 if none
	buf        []byte // scratch for encoded records, reused across requests
	keyBuf     []byte // scratch for storage keys, reused across requests
	onLease    LeaseChanged
}

// OnLeaseChange has fn told of every change of a key's lease the batch's
// requests make (see LeaseChanged).
func (b *Batch) OnLeaseChange(fn LeaseChanged) { b.onLease = fn }

// NewBatch starts a batch on top of the committed state. Only one batch may be
// open at a time.
func (s *Store) NewBatch() *Batch {
	s.viewMu.RLock()
	rev, compactRev := s.rev, s.compactRev
	s.viewMu.RUnlock()
	return &Batch{s: s, b: s.db.NewIndexedBatch(), rev: rev, compactRev: compactRev, compactTo: -1}
}

// Writer exposes the batch so the caller can stage its own state (the applied
// index) atomically with the requests.
func (b *Batch) Writer() *pebble.Batch { return b.b }

// Rev returns the revision after the requests staged so far.
func (b *Batch) Rev() int64 { return b.rev }

// Commit makes the batch visible to readers, without syncing (the Raft log
// already holds the entries it came from), and closes it.
func (b *Batch) Commit() error {
	defer func() { _ = b.b.Close() }()
	if err := storage.PutMetaUint64(b.b, storage.MetaRevision, uint64(b.rev)); err != nil {
		return err
	}
	if b.compactTo >= 0 {
		if err := storage.PutMetaUint64(b.b, storage.MetaCompacted, uint64(b.compactTo)); err != nil {
			return err
		}
	}
	s := b.s
	s.viewMu.Lock()
	err := b.b.Commit(pebble.NoSync)
	if err == nil {
		s.rev, s.compactRev = b.rev, b.compactRev
	}
	s.viewMu.Unlock()
	if err != nil {
		s.keys.reset()
		return fmt.Errorf("mvcc: commit batch at revision %d: %w", b.rev, err)
	}
	if b.compactTo > 0 {
		s.compactor.schedule(b.compactTo)
	}
	return nil
}

// Abort discards the batch, and with it the key cache, which may describe
// the batch's writes.
func (b *Batch) Abort() {
	b.s.keys.reset()
	_ = b.b.Close()
}

// txn is one request executing against a view: every change it makes
// carries revision begin+1. In a Batch it reads and writes the batch; a
// read-only transaction on committed state reads a snapshot and has no w.
type txn struct {
	r          pebble.Reader
	w          *pebble.Batch // nil when the request may not write
	keys       *keyCache     // nil when the request may not write
	filter     *keyFilter    // nil when the request may not write
	buf        []byte        // scratch: Pebble copies what it is given
	keyBuf     []byte
	begin      int64
	compactRev int64
	changed    bool
	onLease    LeaseChanged // nil when nobody keeps a lease index
	sub        uint32       // the sub-revision of the next change (see events.go)
	maxDelete  int64        // the store's maxDeleteBytes
}

func (b *Batch) begin() *txn {
	return &txn{r: b.b, w: b.b, keys: b.s.keys, filter: b.s.filter, buf: b.buf, keyBuf: b.keyBuf, begin: b.rev, compactRev: b.compactRev, onLease: b.onLease, maxDelete: b.s.maxDeleteBytes}
}

// finish takes a successful request's revision into the batch.
func (b *Batch) finish(t *txn) {
	if t.changed {
		b.rev = t.begin + 1
	}
	b.buf, b.keyBuf = t.buf, t.keyBuf
}

// rev is the revision a read inside the request sees, and the one its header
// reports: the next revision once it has written anything.
func (t *txn) rev() int64 {
	if t.changed {
		return t.begin + 1
	}
	return t.begin
}

// put writes key's next version: a create to the latest space only, an
// overwrite to both spaces (see keys.go).
func (t *txn) put(key, value []byte, lease int64) error {
	rev := t.begin + 1
	prev, err := t.supersede(key)
	if err != nil {
		return err
	}
	rec := record{createRevision: rev, modRevision: rev, version: 1, lease: lease, value: value}
	if prev.exists {
		rec.createRevision = prev.createRevision
		rec.version = prev.version + 1
	}
	t.buf = appendRecord(t.buf[:0], &rec)
	t.keyBuf = appendLatestKey(t.keyBuf[:0], key)
	if err := t.w.Set(t.keyBuf, t.buf, nil); err != nil {
		return fmt.Errorf("mvcc: stage put %q: %w", key, err)
	}
	if prev.exists {
		t.keyBuf = appendHistoryKey(t.keyBuf[:0], key, rev)
		if err := t.w.Set(t.keyBuf, t.buf, nil); err != nil {
			return fmt.Errorf("mvcc: stage put %q: %w", key, err)
		}
		t.keys.set(key, keyMeta{exists: true, createRevision: rec.createRevision, modRevision: rev, version: rec.version, lease: lease})
	}
	t.filter.add(key)
	t.changed = true
	if prev.lease != lease && t.onLease != nil {
		if err := t.onLease(key, prev.lease, lease); err != nil {
			return fmt.Errorf("mvcc: put %q: %w", key, err)
		}
	}
	return t.logEvent(eventPut, key)
}

// supersede readies key's live version, if it has one, to be superseded by a
// put at this request's revision, and returns what the put needs of it. Only
// a first version needs work: it is copied into history, where later
// versions are already. The filter answers most creates, and the key cache
// most overwrites of a later version, without a lookup.
func (t *txn) supersede(key []byte) (keyMeta, error) {
	if !t.filter.mayContain(key) {
		return keyMeta{}, nil // never written
	}
	if m, ok := t.keys.get(key); ok {
		if !m.exists {
			return m, t.forgetTombstone(key)
		}
		return m, nil
	}
	t.keyBuf = appendLatestKey(t.keyBuf[:0], key)
	v, closer, err := t.r.Get(t.keyBuf)
	if errors.Is(err, pebble.ErrNotFound) {
		return keyMeta{}, t.forgetTombstone(key)
	}
	if err != nil {
		return keyMeta{}, fmt.Errorf("mvcc: get %q: %w", key, err)
	}
	defer func() { _ = closer.Close() }()
	var live record
	if err := decodeRecord(v, &live); err != nil {
		return keyMeta{}, fmt.Errorf("mvcc: key %q: %w", key, err)
	}
	// A first version this request wrote is not copied: its successor
	// takes its revision.
	if live.version == 1 && live.modRevision != t.begin+1 {
		t.keyBuf = appendHistoryKey(t.keyBuf[:0], key, live.modRevision)
		if err := t.w.Set(t.keyBuf, v, nil); err != nil {
			return keyMeta{}, fmt.Errorf("mvcc: stage the first version of %q: %w", key, err)
		}
	}
	return keyMeta{exists: true, createRevision: live.createRevision, version: live.version, lease: live.lease}, nil
}

// forgetTombstone readies a put that recreates key. The key cache must not
// keep saying it is deleted; and this request may have deleted it (a delete
// to the end of the key space may precede a put of a key it covered), so a
// tombstone at this revision gives way to the new version.
func (t *txn) forgetTombstone(key []byte) error {
	t.keys.forget(key)
	if !t.changed {
		return nil
	}
	t.keyBuf = appendHistoryKey(t.keyBuf[:0], key, t.begin+1)
	if err := t.w.Delete(t.keyBuf, nil); err != nil {
		return fmt.Errorf("mvcc: stage put %q: %w", key, err)
	}
	return nil
}

// deleteRange deletes the live keys in sp and returns them as they were.
// With bounded set it fails with ErrDeleteTooLarge, having staged nothing,
// when deleting them would stage more than the store allows (see
// addDeleteCost), which it learns while reading them.
func (t *txn) deleteRange(sp span, bounded bool) ([]*mvccpb.KeyValue, error) {
	sc := scan{}
	visit := sc.visit
	if bounded {
		var spent int64
		visit = t.countDeleteCost(&spent, sc.visit)
	}
	if err := visitLatestSpan(t.r, sp, visit); err != nil {
		return nil, err
	}
	if len(sc.kvs) == 0 {
		return nil, nil
	}
	rev := t.begin + 1
	tomb := record{tombstone: true, modRevision: rev}
	for _, kv := range sc.kvs {
		t.keyBuf = appendLatestKey(t.keyBuf[:0], kv.Key)
		if err := t.w.Delete(t.keyBuf, nil); err != nil {
			return nil, fmt.Errorf("mvcc: stage delete %q: %w", kv.Key, err)
		}
		// A deleted first version goes to history (later versions are
		// there already), unless this request wrote it: the tombstone
		// takes its revision.
		live := record{createRevision: kv.CreateRevision, modRevision: kv.ModRevision, version: kv.Version, lease: kv.Lease, value: kv.Value}
		if kv.ModRevision == rev {
			if err := t.inlinePut(kv.Key, &live); err != nil {
				return nil, err
			}
		}
		if kv.Version == 1 && kv.ModRevision != rev {
			t.buf = appendRecord(t.buf[:0], &live)
			t.keyBuf = appendHistoryKey(t.keyBuf[:0], kv.Key, kv.ModRevision)
			if err := t.w.Set(t.keyBuf, t.buf, nil); err != nil {
				return nil, fmt.Errorf("mvcc: stage delete %q: %w", kv.Key, err)
			}
		}
		t.buf = appendRecord(t.buf[:0], &tomb)
		t.keyBuf = appendHistoryKey(t.keyBuf[:0], kv.Key, rev)
		if err := t.w.Set(t.keyBuf, t.buf, nil); err != nil {
			return nil, fmt.Errorf("mvcc: stage delete %q: %w", kv.Key, err)
		}
		t.keys.set(kv.Key, keyMeta{})
		if kv.Lease != 0 && t.onLease != nil {
			if err := t.onLease(kv.Key, kv.Lease, 0); err != nil {
				return nil, fmt.Errorf("mvcc: delete %q: %w", kv.Key, err)
			}
		}
		if err := t.logEvent(eventDelete, kv.Key); err != nil {
			return nil, err
		}
	}
	t.changed = true
	return sc.kvs, nil
}

// rangeReq executes a range inside a write request: it sees the request's own
// writes, at the request's revision.
func (t *txn) rangeReq(req *pb.RangeRequest) (*pb.RangeResponse, error) {
	cur := t.rev()
	plan, err := planRange(req, cur, t.compactRev)
	if err != nil {
		return nil, err
	}
	if plan.pointLatest() {
		kv, err := getLatest(t.r, req.Key)
		if err != nil {
			return nil, err
		}
		return plan.answerPoint(req, cur, kv), nil
	}
	c, err := plan.open(t.r)
	if err != nil {
		return nil, err
	}
	return plan.run(c, req, cur)
}

// Put executes a put request.
func (b *Batch) Put(req *pb.PutRequest, leaseExists LeaseExists) (*pb.PutResponse, error) {
	if req.Lease != 0 && !leaseExists(req.Lease) {
		return nil, ErrLeaseNotFound
	}
	t := b.begin()
	resp, err := t.putReq(req)
	if err != nil {
		return nil, err
	}
	b.finish(t)
	return resp, nil
}

// newPutResponse returns an empty put response with its header in one
// allocation: every put makes one, and a put costs only a few.
func newPutResponse() *pb.PutResponse {
	r := new(struct {
		resp   pb.PutResponse
		header pb.ResponseHeader
	})
	r.resp.Header = &r.header
	return &r.resp
}

func (t *txn) putReq(req *pb.PutRequest) (*pb.PutResponse, error) {
	value, lease := req.Value, req.Lease
	resp := newPutResponse()
	if req.IgnoreValue || req.IgnoreLease || req.PrevKv {
		prev, err := getLatest(t.r, req.Key)
		if err != nil {
			return nil, err
		}
		if prev == nil && (req.IgnoreValue || req.IgnoreLease) {
			return nil, ErrKeyNotFound
		}
		if prev != nil {
			if req.IgnoreValue {
				value = prev.Value
			}
			if req.IgnoreLease {
				lease = prev.Lease
			}
			if req.PrevKv {
				resp.PrevKv = prev
			}
		}
	}
	if err := t.put(req.Key, value, lease); err != nil {
		return nil, err
	}
	resp.Header.Revision = t.rev()
	return resp, nil
}

// DeleteRange executes a delete request.
func (b *Batch) DeleteRange(req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	t := b.begin()
	resp, err := t.deleteReq(req, true)
	if err != nil {
		return nil, err
	}
	b.finish(t)
	return resp, nil
}

// deleteReq executes a delete request; bounded as deleteRange.
func (t *txn) deleteReq(req *pb.DeleteRangeRequest, bounded bool) (*pb.DeleteRangeResponse, error) {
	deleted, err := t.deleteRange(newSpan(req.Key, req.RangeEnd), bounded)
	if err != nil {
		return nil, err
	}
	resp := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{Revision: t.rev()}, Deleted: int64(len(deleted))}
	if req.PrevKv {
		resp.PrevKvs = deleted
	}
	return resp, nil
}

// deleteCost is what deleting a live version stages in the batch, near
// enough: the removal of its latest version, a tombstone and an event, each
// about a key long, and a first version's value copied into history.
func deleteCost(key []byte, rec *record) int64 {
	cost := 4*int64(len(key)) + 80
	if rec.version == 1 {
		cost += int64(len(rec.value))
	}
	return cost
}

// addDeleteCost adds the cost of deleting the live keys in sp to spent and
// returns the sum, or fails with ErrDeleteTooLarge once it passes the store's
// bound; it stops reading there, so a refused delete of a huge range costs no
// more than the bound to find out.
func (t *txn) addDeleteCost(sp span, spent int64) (int64, error) {
	err := visitLatestSpan(t.r, sp, t.countDeleteCost(&spent, nil))
	return spent, err
}

// countDeleteCost returns a visit that adds the cost of deleting each live
// version it meets to *spent, fails with ErrDeleteTooLarge once that passes
// the store's bound, and otherwise hands the version on to next, if any.
func (t *txn) countDeleteCost(spent *int64, next visitFunc) visitFunc {
	var rec record
	return func(key, v []byte) (bool, error) {
		if err := decodeRecord(v, &rec); err != nil {
			return false, fmt.Errorf("mvcc: key %q: %w", key, err)
		}
		*spent += deleteCost(key, &rec)
		if *spent > t.maxDelete {
			return false, ErrDeleteTooLarge
		}
		if next == nil {
			return true, nil
		}
		return next(key, v)
	}
}

// DeleteKeys deletes every key of keys that is live, all at one revision (a
// revoked lease's keys), and returns the revision after it: unchanged when
// no key was live.
func (b *Batch) DeleteKeys(keys [][]byte) (int64, error) {
	t := b.begin()
	for _, k := range keys {
		if _, err := t.deleteRange(newSpan(k, nil), false); err != nil {
			return 0, err
		}
	}
	b.finish(t)
	return b.rev, nil
}

// Range executes a range request against the batch, seeing its writes.
func (b *Batch) Range(req *pb.RangeRequest) (*pb.RangeResponse, error) {
	return b.begin().rangeReq(req)
}

// Compact executes a compaction request: reads below rev fail from now on, and
// the versions they would need are deleted in the background. The returned
// channel is closed once they are gone (for physical compaction requests).
func (b *Batch) Compact(rev int64) (*pb.CompactionResponse, <-chan struct{}, error) {
	if rev <= b.compactRev {
		return nil, nil, ErrCompacted
	}
	if rev > b.rev {
		return nil, nil, ErrFutureRev
	}
	b.compactRev, b.compactTo = rev, rev
	return &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: b.rev}}, b.s.compactor.doneCh(rev), nil
}

// Txn executes a transaction: the compares of it and of every nested
// transaction are evaluated first, against the state before the transaction;
// then the chosen branch is checked, and only then executed, so a transaction
// that fails leaves no trace.
func (b *Batch) Txn(req *pb.TxnRequest, leaseExists LeaseExists) (*pb.TxnResponse, error) {
	t := b.begin()
	resp, err := t.run(req, leaseExists)
	if err != nil {
		return nil, err
	}
	b.finish(t)
	return resp, nil
}

func (t *txn) run(req *pb.TxnRequest, leaseExists LeaseExists) (*pb.TxnResponse, error) {
	path, err := t.comparePath(req)
	if err != nil {
		return nil, err
	}
	if _, err := t.checkTxn(req, path, leaseExists, new([][]byte), new(int64)); err != nil {
		return nil, err
	}
	resp, _, err := t.executeTxn(req, path)
	if err != nil {
		if t.changed {
			// checkTxn exists so that this cannot happen: the batch holds
			// part of a transaction that failed, and must not commit.
			return nil, fmt.Errorf("mvcc: transaction failed after writing (%w): %w", err, errPartialTxn)
		}
		return nil, err
	}
	resp.Header.Revision = t.rev()
	return resp, nil
}

// IsReadOnly reports whether a transaction can write nothing on any path.
func IsReadOnly(req *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			switch r := op.Request.(type) {
			case *pb.RequestOp_RequestPut, *pb.RequestOp_RequestDeleteRange:
				return false
			case *pb.RequestOp_RequestTxn:
				if !IsReadOnly(r.RequestTxn) {
					return false
				}
			}
		}
	}
	return true
}

// ReadTxn executes a read-only transaction (see IsReadOnly) against
// committed state, at one revision, without going through Raft: it changes
// nothing, so it needs no log entry.
func (s *Store) ReadTxn(req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if !IsReadOnly(req) {
		return nil, fmt.Errorf("mvcc: ReadTxn given a transaction that writes")
	}
	s.viewMu.RLock()
	snap := s.db.NewSnapshot()
	t := &txn{r: snap, begin: s.rev, compactRev: s.compactRev}
	s.viewMu.RUnlock()
	defer func() { _ = snap.Close() }()
	return t.run(req, nil)
}

// comparePath evaluates the compares of req and of the transactions nested in
// the branch each one takes, depth first, in request order.
func (t *txn) comparePath(req *pb.TxnRequest) ([]bool, error) {
	ok, err := t.compares(req.Compare)
	if err != nil {
		return nil, err
	}
	path := []bool{ok}
	for _, op := range branch(req, ok) {
		if nested := op.GetRequestTxn(); nested != nil {
			sub, err := t.comparePath(nested)
			if err != nil {
				return nil, err
			}
			path = append(path, sub...)
		}
	}
	return path, nil
}

func branch(req *pb.TxnRequest, succeeded bool) []*pb.RequestOp {
	if succeeded {
		return req.Success
	}
	return req.Failure
}

func (t *txn) compares(cmps []*pb.Compare) (bool, error) {
	for _, c := range cmps {
		ok, err := t.compare(c)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// compare holds when every key in its range satisfies it. On no key at all, a
// value compare fails (a missing value cannot be told from an empty one) and
// the others compare against zero.
func (t *txn) compare(c *pb.Compare) (bool, error) {
	if kv, known := t.knownKey(c); known {
		return compareKV(c, kv), nil
	}
	sc := scan{}
	if err := readLatest(t.r, newSpan(c.Key, c.RangeEnd), &sc); err != nil {
		return false, err
	}
	if len(sc.kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false, nil
		}
		return compareKV(c, &mvccpb.KeyValue{}), nil
	}
	for _, kv := range sc.kvs {
		if !compareKV(c, kv) {
			return false, nil
		}
	}
	return true, nil
}

// knownKey answers a compare of a single key, the commonest (Kubernetes
// guards every write with one), without reading it when the write path
// already knows the key: one the key filter never saw is absent, and one the
// key cache holds is as cached, for every compare but a value's. Otherwise
// known is false, and the key is read (a point lookup: see visitLatestSpan).
func (t *txn) knownKey(c *pb.Compare) (kv *mvccpb.KeyValue, known bool) {
	if len(c.RangeEnd) != 0 || c.Target == pb.Compare_VALUE || t.keys == nil || t.filter == nil {
		return nil, false
	}
	if !t.filter.mayContain(c.Key) {
		return &mvccpb.KeyValue{}, true
	}
	m, ok := t.keys.get(c.Key)
	if !ok {
		return nil, false
	}
	if !m.exists {
		return &mvccpb.KeyValue{}, true
	}
	return &mvccpb.KeyValue{CreateRevision: m.createRevision, ModRevision: m.modRevision, Version: m.version, Lease: m.lease}, true
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var result int
	switch c.Target {
	case pb.Compare_VALUE:
		want := []byte{}
		if v, ok := c.TargetUnion.(*pb.Compare_Value); ok {
			want = v.Value
		}
		result = bytes.Compare(kv.Value, want)
	case pb.Compare_CREATE:
		result = compareInt(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		result = compareInt(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		result = compareInt(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		result = compareInt(kv.Lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return result == 0
	case pb.Compare_NOT_EQUAL:
		return result != 0
	case pb.Compare_GREATER:
		return result > 0
	case pb.Compare_LESS:
		return result < 0
	}
	return true
}

func compareInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkTxn finds the errors the chosen branches would hit before anything is
// written: ranges at future or compacted revisions, puts that need an absent
// key, unknown leases. It walks the operations in execution order, so that a
// put needing a key sees the deletes before it: request validation already
// rejects a put of a key deleted in the same transaction, except when the
// delete runs to the end of the key space (range_end "\x00"), which etcd's
// duplicate check lets through. It returns how many nested transactions it
// walked.
func (t *txn) checkTxn(req *pb.TxnRequest, path []bool, leaseExists LeaseExists, deletedFrom *[][]byte, deleteSpent *int64) (int, error) {
	walked := 0
	for _, op := range branch(req, path[0]) {
		switch r := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rev := r.RequestRange.GetRevision()
			switch {
			case rev == 0:
			case rev > t.begin:
				return 0, ErrFutureRev
			case rev < t.compactRev:
				return 0, ErrCompacted
			}
		case *pb.RequestOp_RequestDeleteRange:
			sp := newSpan(r.RequestDeleteRange.GetKey(), r.RequestDeleteRange.GetRangeEnd())
			if sp.fromKey {
				*deletedFrom = append(*deletedFrom, r.RequestDeleteRange.GetKey())
			}
			// The transaction's deletes count together, against the state
			// before it (a transaction may not put a key it deletes: the
			// API refuses duplicate keys).
			spent, err := t.addDeleteCost(sp, *deleteSpent)
			if err != nil {
				return 0, err
			}
			*deleteSpent = spent
		case *pb.RequestOp_RequestPut:
			put := r.RequestPut
			// etcd checks the lease before the key.
			if put.GetLease() != 0 && !leaseExists(put.GetLease()) {
				return 0, ErrLeaseNotFound
			}
			if put.GetIgnoreValue() || put.GetIgnoreLease() {
				prev, err := lookupLatest(t.r, put.GetKey())
				if err != nil {
					return 0, err
				}
				found := prev.exists
				for _, from := range *deletedFrom {
					if bytes.Compare(put.GetKey(), from) >= 0 {
						found = false
					}
				}
				if !found {
					return 0, ErrKeyNotFound
				}
			}
		case *pb.RequestOp_RequestTxn:
			n, err := t.checkTxn(r.RequestTxn, path[1+walked:], leaseExists, deletedFrom, deleteSpent)
			if err != nil {
				return 0, err
			}
			walked += n + 1
		}
	}
	return walked, nil
}

// executeTxn runs the branch path chose for req. Nested responses carry only
// the revision in their headers; a nested transaction's header stays empty.
func (t *txn) executeTxn(req *pb.TxnRequest, path []bool) (*pb.TxnResponse, int, error) {
	ops := branch(req, path[0])
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{}, Succeeded: path[0], Responses: make([]*pb.ResponseOp, len(ops))}
	walked := 0
	for i, op := range ops {
		switch r := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr, err := t.rangeReq(r.RequestRange)
			if err != nil {
				return nil, 0, err
			}
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
		case *pb.RequestOp_RequestPut:
			pr, err := t.putReq(r.RequestPut)
			if err != nil {
				return nil, 0, err
			}
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: pr}}
		case *pb.RequestOp_RequestDeleteRange:
			// checkTxn has bounded the transaction's deletes together.
			dr, err := t.deleteReq(r.RequestDeleteRange, false)
			if err != nil {
				return nil, 0, err
			}
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}}
		case *pb.RequestOp_RequestTxn:
			tr, n, err := t.executeTxn(r.RequestTxn, path[1+walked:])
			if err != nil {
				return nil, 0, err
			}
			walked += n + 1
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: tr}}
		default:
			resp.Responses[i] = &pb.ResponseOp{}
		}
	}
	return resp, walked, nil
}
