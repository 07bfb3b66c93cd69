package watch

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/mvcc"
)

// InvalidWatchID is the watch ID of a response that belongs to no watcher:
// a refused create, and the answer to a WatchProgressRequest (etcd's
// clientv3.InvalidWatchID).
const InvalidWatchID = -1

// Reasons a create is refused, as etcd words them.
var (
	ErrDuplicateID = errors.New("mvcc: duplicate watch ID provided on the WatchStream")
	ErrEmptyRange  = errors.New("mvcc: watcher range is empty")
)

// ErrStopped ends a stream whose hub was closed.
var ErrStopped = errors.New("watch: member is stopping")

// maxResponseEvents bounds the events of one response, at a revision
// boundary: a revision's events always travel together (unless fragmented).
const maxResponseEvents = 1000

// Stream is one client's Watch stream: the watchers it created, served in
// turns on the goroutine that runs Run.
type Stream struct {
	hub *Hub
	in  chan *pb.WatchRequest

	// Owned by Run's goroutine.
	//
	// watchers holds the stream's watchers by value: a stream may hold a
	// hundred thousand idle watchers, and a value each in one slice costs
	// a third of what a pointer, an object and a map entry each did. Each
	// gets a turn per round, in slice order.
	//
	// The first sortedLen are sorted by ID, for lookups by binary search;
	// the rest are watchers created with IDs below the largest, appended
	// and merged in once there are enough of them. A canceled watcher
	// leaves a tombstone (see remove) until half the slice is tombstones.
	// Without these, each create with a client-chosen ID and each cancel
	// would move half the slice: a stream's n watchers would cost n² to
	// create in random ID order, or to cancel in order.
	watchers  []watcher
	sortedLen int
	gone      int // tombstones in watchers
	nextID    int64
	// progressAt, when > 0, is a WatchProgressRequest waiting for every
	// watcher to have been sent all events up to that revision.
	progressAt int64
	// idleAt is the ring's end (exclusive) at which a round last found no
	// watcher with anything to send: until the ring moves on, or a
	// watcher from the past is created, another round would find the
	// same, so none is run. Without it, every request would cost a pass
	// over every watcher: creating n watchers one at a time, as clientv3
	// does, would take n² steps.
	idleAt int64
	// responded counts the event responses the rounds since the stream
	// last went idle sent; paceUntil is when the next round may start
	// (see Config.PacePerResponse).
	responded int
	paceUntil time.Time
	// window holds, during a round, the ring's revisions from windowFrom
	// on: watchers that far read it without the hub's lock. windowFrom is
	// where the last round left the watchers in sync.
	window     []revEvents
	windowFrom int64
}

type watcher struct {
	id   int64
	next int64 // the first revision whose events it has not been sent
	// rng is the key, followed, for a range with an end, by the end:
	// [rng[:keyLen], rng[keyLen:]). A single key (keyLen == len(rng)) or
	// an open range (fromKey) keeps the create request's key itself.
	rng            []byte
	keyLen         int32
	fromKey        bool // every key from the key on (etcd's range end "\x00")
	prevKV         bool
	fragment       bool
	noPut          bool
	noDelete       bool
	progressNotify bool
	sentSince      bool // events sent since the last periodic progress tick
	// synced: the watcher has been in sync with the ring (or started
	// from the present). Like etcd's synced watchers, it keeps getting
	// the events the ring still holds across a compaction; a watcher
	// catching up from the past is canceled by one.
	synced bool
}

func (w *watcher) match(key []byte) bool {
	k := w.rng[:w.keyLen]
	switch {
	case w.fromKey:
		return bytes.Compare(key, k) >= 0
	case int(w.keyLen) == len(w.rng):
		return bytes.Equal(key, k)
	}
	return bytes.Compare(key, k) >= 0 && bytes.Compare(key, w.rng[w.keyLen:]) < 0
}

// goneNext marks a tombstone: the next revision of a watcher that was
// removed. No round sends it anything, and no progress waits for it.
const goneNext = math.MaxInt64

func (w *watcher) gone() bool { return w.next == goneNext }

func byID(a, b watcher) int { return cmp.Compare(a.id, b.id) }

// find returns the index of the watcher with ID id, live or a tombstone, or
// -1 if there is none.
func (s *Stream) find(id int64) int {
	if i, ok := slices.BinarySearchFunc(s.watchers[:s.sortedLen], id, func(w watcher, id int64) int { return cmp.Compare(w.id, id) }); ok {
		return i
	}
	for i := s.sortedLen; i < len(s.watchers); i++ {
		if s.watchers[i].id == id {
			return i
		}
	}
	return -1
}

// live returns how many watchers the stream has.
func (s *Stream) live() int { return len(s.watchers) - s.gone }

// add adds w, whose ID no slot holds. Not during a round: it may move
// watchers.
func (s *Stream) add(w watcher) {
	n := len(s.watchers)
	s.watchers = append(s.watchers, w)
	if s.sortedLen == n && (n == 0 || s.watchers[n-1].id < w.id) {
		s.sortedLen++
		return
	}
	// A linear search of the unsorted tail against a merge of O(n) every
	// so often: this bound keeps both to a few per cent of the cost of
	// the creates.
	if len(s.watchers)-s.sortedLen > max(64, s.sortedLen/64) {
		s.sortTail()
	}
}

// sortTail merges the unsorted tail of watchers into the sorted part.
func (s *Stream) sortTail() {
	if s.sortedLen == len(s.watchers) {
		return
	}
	tail := slices.Clone(s.watchers[s.sortedLen:])
	slices.SortFunc(tail, byID)
	i, j := s.sortedLen-1, len(tail)-1
	for k := len(s.watchers) - 1; j >= 0; k-- {
		if i >= 0 && s.watchers[i].id > tail[j].id {
			s.watchers[k] = s.watchers[i]
			i--
		} else {
			s.watchers[k] = tail[j]
			j--
		}
	}
	s.sortedLen = len(s.watchers)
}

// compact drops the tombstones once they are half the slice or more, and
// gives back a slice mostly empty. Not during a round: it moves watchers.
func (s *Stream) compact() {
	if s.gone == 0 || s.gone*2 < len(s.watchers) {
		return
	}
	s.sortTail()
	s.watchers = slices.DeleteFunc(s.watchers, func(w watcher) bool { return w.gone() })
	if cap(s.watchers) > 4*len(s.watchers)+64 {
		s.watchers = slices.Clone(s.watchers)
	}
	s.sortedLen, s.gone = len(s.watchers), 0
}

// NewStream opens a stream on the hub. Requests go in through Requests; Run
// serves them. Close it when Run has returned.
func (h *Hub) NewStream() *Stream {
	h.addStream()
	return &Stream{hub: h, in: make(chan *pb.WatchRequest, 16)}
}

// Requests is where the goroutine receiving the client's requests hands
// them over. A send blocks while Run is busy (sending to a client that does
// not read, say): the client is pushed back, and nothing queues up. The
// stream keeps a create request's key and range end, not copies of them:
// the sender must not change them afterwards.
func (s *Stream) Requests() chan<- *pb.WatchRequest { return s.in }

// Close releases the stream's hold on the hub and its watchers. Call it once
// Run has returned.
func (s *Stream) Close() {
	s.hub.watchers.Add(-int64(s.live()))
	for _, w := range s.watchers {
		if !w.synced {
			s.hub.catching.Add(-1)
		}
	}
	s.watchers = nil
	s.hub.removeStream()
}

// Run serves the stream until ctx ends, the hub stops, or send fails. send
// gets each response with its header's revision set (0 where etcd sends
// none); it may fill the rest of the header.
func (s *Stream) Run(ctx context.Context, send func(*pb.WatchResponse) error) error {
	tick := time.NewTicker(s.hub.cfg.ProgressInterval)
	defer tick.Stop()
	pace := time.NewTimer(time.Hour)
	pace.Stop()
	defer pace.Stop()
	for {
		changed, ringNext := s.hub.state()
		if err := s.drainRequests(send); err != nil {
			return err
		}
		s.compact()
		var paced <-chan time.Time
		if ringNext != s.idleAt {
			if wait := time.Until(s.paceUntil); wait > 0 {
				// Paced: the round starts when the pause is over (or
				// after a request); new commits need not wake the stream.
				pace.Reset(wait)
				paced, changed = pace.C, nil
			} else {
				worked, err := s.serveRound(ringNext, send)
				if err != nil {
					return err
				}
				if worked {
					continue
				}
				s.idleAt = ringNext
				if s.responded > 0 {
					s.paceUntil = time.Now().Add(min(time.Duration(s.responded)*s.hub.cfg.PacePerResponse, s.hub.cfg.MaxPace))
					s.responded = 0
				}
			}
		}
		if err := s.answerProgress(send); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.hub.stopC:
			return ErrStopped
		case req := <-s.in:
			if err := s.handle(req, send); err != nil {
				return err
			}
		case <-changed:
		case <-paced:
		case <-tick.C:
			if err := s.progressTick(ringNext, send); err != nil {
				return err
			}
		}
		pace.Stop()
	}
}

func (s *Stream) drainRequests(send func(*pb.WatchResponse) error) error {
	for {
		select {
		case req := <-s.in:
			if err := s.handle(req, send); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

func (s *Stream) header() *pb.ResponseHeader {
	return &pb.ResponseHeader{Revision: s.hub.store.Rev()}
}

func (s *Stream) handle(req *pb.WatchRequest, send func(*pb.WatchResponse) error) error {
	switch r := req.RequestUnion.(type) {
	case *pb.WatchRequest_CreateRequest:
		return s.create(r.CreateRequest, send)
	case *pb.WatchRequest_CancelRequest:
		id := r.CancelRequest.GetWatchId()
		i := s.find(id)
		if i < 0 || s.watchers[i].gone() {
			return nil // etcd answers nothing for a watcher it does not know
		}
		s.remove(i)
		return send(&pb.WatchResponse{Header: s.header(), WatchId: id, Canceled: true})
	case *pb.WatchRequest_ProgressRequest:
		// etcd answers through a watcher: a stream without one gets
		// no answer.
		if s.progressAt == 0 && s.live() > 0 {
			s.progressAt = s.hub.store.Rev()
		}
	}
	return nil
}

func (s *Stream) create(cr *pb.WatchCreateRequest, send func(*pb.WatchResponse) error) error {
	if cr == nil {
		return nil
	}
	rev := s.hub.store.Rev()
	w := watcher{
		rng: cr.Key, keyLen: int32(len(cr.Key)), next: cr.StartRevision,
		prevKV: cr.PrevKv, fragment: cr.Fragment, progressNotify: cr.ProgressNotify,
	}
	switch {
	case len(cr.RangeEnd) == 0:
	case len(cr.RangeEnd) == 1 && cr.RangeEnd[0] == 0:
		w.fromKey = true
	default:
		// One allocation for both bounds; the full slice expression
		// keeps append from writing into the request's buffer.
		w.rng = append(cr.Key[:len(cr.Key):len(cr.Key)], cr.RangeEnd...)
	}
	for _, f := range cr.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDelete = true
		}
	}
	if w.next <= 0 || w.next > rev {
		w.next, w.synced = max(w.next, rev+1), true
	}
	refuse := func(err error) error {
		return send(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: InvalidWatchID, Created: true, Canceled: true, CancelReason: err.Error()})
	}
	if int(w.keyLen) < len(w.rng) && bytes.Compare(w.rng[:w.keyLen], w.rng[w.keyLen:]) >= 0 {
		return refuse(ErrEmptyRange)
	}
	slot := -1
	if cr.WatchId != 0 {
		if slot = s.find(cr.WatchId); slot >= 0 && !s.watchers[slot].gone() {
			return refuse(ErrDuplicateID)
		}
		w.id = cr.WatchId
	} else {
		for s.find(s.nextID) >= 0 {
			s.nextID++
		}
		w.id = s.nextID
		s.nextID++
	}
	if slot >= 0 {
		s.watchers[slot] = w // the tombstone of the ID: the order holds
		s.gone--
	} else {
		s.add(w)
	}
	s.hub.watchers.Add(1)
	if !w.synced {
		s.hub.catching.Add(1)
		// It starts in the past, maybe before the ring's end: the next
		// round must look at it. A watcher from the present starts at or
		// past the ring's end (the hub reads no further than the
		// store's revision), so the round that found nothing still holds.
		s.idleAt = 0
	}
	return send(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: w.id, Created: true})
}

// remove leaves a tombstone in place of the watcher at index i: its ID, to
// keep the order, and nothing it holds. Watchers keep their places, so a
// round may remove the watcher whose turn it is.
func (s *Stream) remove(i int) {
	w := &s.watchers[i]
	s.hub.watchers.Add(-1)
	if !w.synced {
		s.hub.catching.Add(-1)
	}
	*w = watcher{id: w.id, next: goneNext, synced: true}
	s.gone++
}

// serveRound gives each watcher one turn: at most one response (or one
// fragmented revision) of the events it has not been sent. It reports
// whether any watcher moved.
func (s *Stream) serveRound(ringNext int64, send func(*pb.WatchResponse) error) (worked bool, err error) {
	// One copy of what is new in the ring, instead of a lock and a search
	// of the whole ring per watcher: a stream may hold a hundred thousand.
	win, winEnd, winOK := s.hub.window(s.window[:0], s.windowFrom)
	defer func() {
		clear(win) // the events are not the stream's to keep
		s.window = win[:0]
		if winOK {
			s.windowFrom = winEnd
		} else {
			s.windowFrom = ringNext
		}
	}()
	for i := range s.watchers {
		w := &s.watchers[i]
		if w.next >= ringNext {
			continue // nothing new for it yet
		}
		// Behind a compaction, as etcd tells a watcher that is not in
		// sync: the header carries no revision.
		compacted := func(compactRev int64) error {
			id := w.id
			s.remove(i)
			worked = true
			return send(&pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: id, CompactRevision: compactRev, Canceled: true})
		}
		if !w.synced {
			if compactRev := s.hub.store.EventsFrom(); w.next < compactRev {
				if err := compacted(compactRev); err != nil {
					return false, err
				}
				continue
			}
		}
		var (
			evs  []*mvccpb.Event
			next int64
			ok   bool
		)
		if winOK && w.next >= s.windowFrom {
			evs, next = gather(win, winEnd, w.next, maxResponseEvents, w.match)
			ok = true
		} else {
			evs, next, ok = s.hub.collect(w.next, maxResponseEvents, w.match)
		}
		if !ok {
			evs, next, err = s.hub.store.Events(w.next, maxResponseEvents, w.match)
			if errors.Is(err, mvcc.ErrCompacted) {
				if err := compacted(s.hub.store.EventsFrom()); err != nil {
					return false, err
				}
				continue
			}
			if err != nil {
				return false, fmt.Errorf("watch: catch up watcher %d from %d: %w", w.id, w.next, err)
			}
		}
		if next <= w.next {
			continue
		}
		worked = true
		evs, next = s.cut(w.filter(evs), next)
		w.next = next
		if ok && next >= ringNext && !w.synced {
			w.synced = true
			s.hub.catching.Add(-1)
		}
		if len(evs) == 0 {
			continue
		}
		if w.prevKV {
			evs = s.withPrevKV(evs)
		}
		w.sentSince = true
		if err := s.sendEvents(w, evs, next-1, send); err != nil {
			return false, err
		}
	}
	return worked, nil
}

// cut shortens evs, events of revisions up to next-1, at the first revision
// boundary past MaxResponseBytes, and returns the revision to continue
// from: a response holds whole revisions, but not a catch-up's worth of
// them at once.
func (s *Stream) cut(evs []*mvccpb.Event, next int64) ([]*mvccpb.Event, int64) {
	return cutAt(evs, next, s.hub.cfg.MaxResponseBytes)
}

// maxKeyValueOverhead bounds what a KeyValue's encoding adds to its key and
// value: six field tags, two lengths and four varints.
const maxKeyValueOverhead = 6 + 2*binary.MaxVarintLen32 + 4*binary.MaxVarintLen64

func cutAt(evs []*mvccpb.Event, next int64, limit int) ([]*mvccpb.Event, int64) {
	// Most rounds send a few small events: bounding their size from the
	// lengths of their keys and values is enough to know that nothing is
	// cut, without encoding each for its exact size, once per watcher.
	bound := 0
	for _, ev := range evs {
		bound += len(ev.Kv.Key) + len(ev.Kv.Value) + maxKeyValueOverhead
	}
	if bound <= limit {
		return evs, next
	}
	size := 0
	for i, ev := range evs {
		if i > 0 && size > limit && ev.Kv.ModRevision != evs[i-1].Kv.ModRevision {
			return evs[:i], ev.Kv.ModRevision
		}
		size += proto.Size(ev.Kv)
	}
	return evs, next
}

func (w *watcher) filter(evs []*mvccpb.Event) []*mvccpb.Event {
	if !w.noPut && !w.noDelete {
		return evs
	}
	out := evs[:0:0]
	for _, ev := range evs {
		if (ev.Type == mvccpb.PUT && w.noPut) || (ev.Type == mvccpb.DELETE && w.noDelete) {
			continue
		}
		out = append(out, ev)
	}
	return out
}

// withPrevKV returns copies of evs carrying the version each replaced, read
// at the revision before it as etcd does; events are shared with the ring
// and other watchers, so they are never changed in place. A version
// compacted away meanwhile is left out, as in etcd.
func (s *Stream) withPrevKV(evs []*mvccpb.Event) []*mvccpb.Event {
	out := make([]*mvccpb.Event, len(evs))
	for i, ev := range evs {
		c := &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		if ev.Type == mvccpb.DELETE || ev.Kv.Version > 1 {
			resp, err := s.hub.store.Range(&pb.RangeRequest{Key: ev.Kv.Key, Revision: ev.Kv.ModRevision - 1})
			if err == nil && len(resp.Kvs) == 1 {
				c.PrevKv = resp.Kvs[0]
			}
		}
		out[i] = c
	}
	return out
}

// sendEvents sends evs, whole revisions up to rev, in one response, or, for
// a watcher that asked for fragments, in pieces no larger than the limit.
// The header carries rev, the revision the watcher has now been sent every
// event up to.
func (s *Stream) sendEvents(w *watcher, evs []*mvccpb.Event, rev int64, send func(*pb.WatchResponse) error) error {
	s.hub.sent.Add(int64(len(evs)))
	s.responded++
	hdrRev := rev
	resp := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: hdrRev}, WatchId: w.id, Events: evs}
	limit := s.hub.cfg.MaxResponseBytes
	if !w.fragment || proto.Size(resp) <= limit {
		return send(resp)
	}
	for len(evs) > 0 {
		size, n := 0, 0
		for n < len(evs) {
			es := proto.Size(evs[n])
			if n > 0 && size+es > limit {
				break
			}
			size += es
			n++
		}
		part := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: hdrRev}, WatchId: w.id, Events: evs[:n], Fragment: n < len(evs)}
		if err := send(part); err != nil {
			return err
		}
		evs = evs[n:]
	}
	return nil
}

// answerProgress answers a pending WatchProgressRequest once every watcher
// has been sent every event up to the revision the request found, with the
// newest revision below which no watcher has an event pending (etcd 3.6: the
// answer waits for the stream's watchers to be in sync).
func (s *Stream) answerProgress(send func(*pb.WatchResponse) error) error {
	if s.progressAt == 0 {
		return nil
	}
	rev := s.hub.store.Rev()
	if s.live() == 0 {
		s.progressAt = 0 // its watchers were all canceled: no answer
		return nil
	}
	for _, w := range s.watchers {
		if w.next <= s.progressAt {
			return nil
		}
		rev = min(rev, w.next-1)
	}
	s.progressAt = 0
	return send(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: InvalidWatchID})
}

// progressTick sends a progress notification to each watcher that asked for
// them, is in sync and was sent no events since the last tick, as etcd does.
func (s *Stream) progressTick(ringNext int64, send func(*pb.WatchResponse) error) error {
	for i := range s.watchers {
		w := &s.watchers[i]
		if !w.progressNotify {
			continue
		}
		sent := w.sentSince
		w.sentSince = false
		if sent || w.next < ringNext {
			continue
		}
		if err := send(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: w.next - 1}, WatchId: w.id}); err != nil {
			return err
		}
	}
	return nil
}
