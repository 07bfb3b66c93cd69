// Package watch serves etcd watches on one member: a hub that follows the
// member's MVCC store and keeps a bounded ring of its recent events, and
// streams (one per gRPC Watch stream, each holding many watchers) that send
// every watcher the events of its range in revision order, from the ring
// when the watcher is close to the present and from the store's event index
// (mvcc.Store.Events) when it is behind.
//
// Events come from the member's own store, which its own apply loop fills,
// so every member serves watches, followers included, and a watch resumed
// on another member from the revision after the last one it saw misses
// nothing: every member's store holds the same events at the same
// revisions.
//
// What watch must never do: block the apply loop, writes or other watchers.
// The apply loop only calls Hub.Notify, which never waits and does no
// per-watcher work; the hub reads the new events on its own goroutine; and
// each stream sends on its own goroutine, pulling from the ring at its own
// pace. A client that stops reading stalls only its own stream, which holds
// at most one response of its own: when it reads again, its watchers resume
// from the ring, or from the event index if the ring has moved past them.
// Memory is bounded by the ring and one response per stream, however slow
// a client is.
package watch

import (
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/plinthdb/plinth/internal/mvcc"
)

// Config tunes a hub and its streams.
type Config struct {
	// RingEvents bounds the events the ring keeps (default 16,384). A
	// revision's events are kept or dropped together, so one revision
	// larger than that may be all the ring holds.
	RingEvents int
	// ProgressInterval is the period of progress notifications to
	// watchers that asked for them (default 10 minutes, etcd's).
	ProgressInterval time.Duration
	// MaxResponseBytes is the size above which a watcher that asked for
	// fragments gets a revision's events in several responses (default
	// 1.5 MiB, etcd's request size limit).
	MaxResponseBytes int
	// WritesInFlight, when set, reports whether writes are on their way
	// to the store: entries in the member's log not yet committed, or its
	// clients' writes not yet applied. Events committed while writes are
	// in flight are held back as a burst's (see BurstQuiet).
	WritesInFlight func() bool
	// BurstQuiet and BurstWait shape how the events of a burst of writes
	// reach the watchers. A write alone is sent at once. When several
	// writes come close together (two within BurstQuiet of each other,
	// several committed at once, commits BurstQuiet apart or less, or
	// writes in flight), the hub holds the
	// new events back from its streams until no write has come or
	// committed for BurstQuiet and none is in flight, or for BurstWait at
	// most since the first was held: each watcher then gets the burst in
	// few responses instead of one per commit. Defaults 10 ms and 50 ms.
	BurstQuiet, BurstWait time.Duration
	// PacePerResponse and MaxPace pace each stream: one that has just
	// sent its watchers events waits PacePerResponse for each response it
	// sent, MaxPace at most, before it sends them more. A client pays for
	// every response it reads, and one with many watchers on a stream
	// pays for one per watcher per round: with the benchmark tool's
	// watch-latency load (10,000 watchers of one key over 100 streams) a
	// round is 10,000 responses, and a burst of writes a few tens of
	// milliseconds apart made a round each, a backlog the client took up
	// to a second to read. Paced, the writes that come during the pause
	// reach each watcher in one response. A stream whose round sent one or
	// two responses waits a millisecond or less; one idle for MaxPace
	// sends at once. Defaults 500 µs and 50 ms.
	PacePerResponse, MaxPace time.Duration
	Logger                   *slog.Logger
}

// Defaults of Config.
const (
	DefaultRingEvents       = 16384
	DefaultProgressInterval = 10 * time.Minute
	DefaultMaxResponseBytes = 1536 * 1024
	// DefaultBurstQuiet and DefaultBurstWait: see Config.BurstQuiet.
	//
	// Why hold events back at all: with many watchers, a client's cost is
	// mostly per response, and a round sent at the first commit of a burst
	// fans out one response per watcher and commit. With the benchmark
	// tool's watch load (10,000 watchers of 10 keys, 100 puts at once, 3
	// members and the client on 2 cores), that work took the cores from
	// the client's puts still to be sent, which then reached the members
	// in clumps 20-40 ms apart, each a round of its own: 20,000-40,000
	// responses instead of 10,000. Holding a burst until the writes pause
	// raised the median events per second from 361,000 to 462,000 over 12
	// alternating runs; a write alone waits for nothing. A quiet of 10 ms
	// and a bound of 50 ms, against 5 and 15, took the median of 12
	// alternating runs on another machine from 290,000 to 329,000, and
	// its slowest run from 146,000 to 297,000 (docs/performance.md,
	// machine L).
	DefaultBurstQuiet = 10 * time.Millisecond
	DefaultBurstWait  = 50 * time.Millisecond
	// DefaultPacePerResponse and DefaultMaxPace: see Config.PacePerResponse.
	// Over ten alternating runs of the watch-latency load (3 members),
	// pacing took plinth's median p99 from 471 to 345 ms; the watch load's
	// events per second did not move.
	DefaultPacePerResponse = 500 * time.Microsecond
	DefaultMaxPace         = 50 * time.Millisecond
)

// readBatchEvents bounds the events the hub reads from the store at once.
const readBatchEvents = 4096

// Hub follows one member's store for its watch streams. Create it with
// NewHub, and Close it before the store.
type Hub struct {
	store  *mvcc.Store
	cfg    Config
	wake   chan struct{} // capacity 1: a pending Notify
	stopC  chan struct{}
	doneC  chan struct{}
	logger *slog.Logger

	// mu guards the fields below. It is never held across I/O: the hub
	// reads the store without it, then appends under it.
	mu sync.RWMutex
	// ring holds the events of revisions [from, next), oldest first, one
	// group per revision that has events (a revision without events, such
	// as 1, has no group).
	ring       []revEvents
	ringEvents int
	from, next int64
	// changed is closed, and replaced, when the streams are to look at
	// the ring again: when next has advanced and the hub publishes it
	// (see publish), or when the ring is reset. Streams waiting for
	// events wait on it.
	changed chan struct{}
	streams int // open streams; the hub reads events only when there are some
	// held is the revision the hub holds the store's events from (0: it
	// holds none). It changes with streams, under mu, so that no stream is
	// ever open while nothing is held: see holdEventsLocked.
	held int64

	// published is the ring's end when changed was last closed: events
	// from there to next are held back (see holdFor).
	published int64

	// epoch is what the times below count nanoseconds from: a monotonic
	// clock, unlike UnixNano.
	epoch time.Time
	// lastWrite and prevWrite are the times of the two latest NoteWrite
	// calls.
	lastWrite, prevWrite atomic.Int64
	// Owned by run's goroutine: the times of the two latest appends, and
	// when the events held back now were first held (0: none are).
	lastAppendAt, prevAppendAt int64
	heldSince                  int64

	watchers atomic.Int64 // watchers of every open stream
	catching atomic.Int64 // of them, those catching up from history
	sent     atomic.Int64 // events sent to watchers since the hub started
}

// Streams returns how many watch streams are open.
func (h *Hub) Streams() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.streams
}

// Watchers returns how many watchers the open streams hold.
func (h *Hub) Watchers() int64 { return h.watchers.Load() }

// CatchingUp returns how many watchers are catching up from history, not yet
// in sync with the events the hub follows (etcd's unsynced, "slow",
// watchers).
func (h *Hub) CatchingUp() int64 { return h.catching.Load() }

// EventsSent returns how many events the hub's streams have sent.
func (h *Hub) EventsSent() int64 { return h.sent.Load() }

type revEvents struct {
	rev int64
	evs []*mvccpb.Event
}

// NewHub starts a hub following store.
func NewHub(store *mvcc.Store, cfg Config) *Hub {
	if cfg.RingEvents <= 0 {
		cfg.RingEvents = DefaultRingEvents
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.BurstQuiet <= 0 {
		cfg.BurstQuiet = DefaultBurstQuiet
	}
	if cfg.BurstWait <= 0 {
		cfg.BurstWait = DefaultBurstWait
	}
	if cfg.PacePerResponse <= 0 {
		cfg.PacePerResponse = DefaultPacePerResponse
	}
	if cfg.MaxPace <= 0 {
		cfg.MaxPace = DefaultMaxPace
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	next := store.Rev() + 1
	h := &Hub{
		store: store, cfg: cfg, logger: logger,
		wake: make(chan struct{}, 1), stopC: make(chan struct{}), doneC: make(chan struct{}),
		from: next, next: next, published: next, changed: make(chan struct{}),
		epoch: time.Now(), lastAppendAt: never, prevAppendAt: never,
	}
	h.lastWrite.Store(never)
	h.prevWrite.Store(never)
	go h.run()
	return h
}

// Notify tells the hub that the store's revision may have advanced. It never
// blocks: the apply loop calls it after each commit.
func (h *Hub) Notify() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// NoteWrite tells the hub that a client's write has reached the member, on
// its way to the log: writes that come close together make a burst, whose
// events are held back until the writes pause (see Config.BurstQuiet). It
// never blocks.
func (h *Hub) NoteWrite() {
	h.prevWrite.Store(h.lastWrite.Swap(h.clock()))
}

// never is the time of a write or append that has not happened: long
// enough ago to be quiet, far enough from overflow to subtract from.
const never = -1 << 62

// clock returns the nanoseconds since the hub's epoch.
func (h *Hub) clock() int64 { return int64(time.Since(h.epoch)) }

// Close stops the hub; its streams end.
func (h *Hub) Close() {
	select {
	case <-h.stopC:
	default:
		close(h.stopC)
	}
	<-h.doneC
}

func (h *Hub) run() {
	defer close(h.doneC)
	defer func() {
		h.mu.Lock()
		h.holdEventsLocked(0)
		h.mu.Unlock()
	}()
	// recheck is armed while events are held back, for when the hold may
	// end without a commit to wake the hub (the writes paused).
	recheck := time.NewTimer(time.Hour)
	recheck.Stop()
	defer recheck.Stop()
	for {
		select {
		case <-h.stopC:
			return
		case <-h.wake:
		case <-recheck.C:
		}
		h.follow()
		if wait := h.holdFor(); wait > 0 {
			recheck.Reset(wait)
			continue
		}
		recheck.Stop()
		h.publish()
	}
}

// holdFor returns how long to hold back the events not yet published before
// looking again, or 0 to publish them now (see Config.BurstQuiet).
func (h *Hub) holdFor() time.Duration {
	h.mu.RLock()
	unpublished := h.next - h.published
	h.mu.RUnlock()
	if unpublished <= 0 {
		h.heldSince = 0
		return 0
	}
	quiet, most := int64(h.cfg.BurstQuiet), int64(h.cfg.BurstWait)
	inFlight := h.cfg.WritesInFlight != nil && h.cfg.WritesInFlight()
	now := h.clock()
	if h.heldSince == 0 {
		burst := unpublished > 1 || inFlight ||
			h.lastAppendAt-h.prevAppendAt < quiet ||
			now-h.prevWrite.Load() < quiet
		if !burst {
			return 0
		}
		h.heldSince = now
	}
	left := h.heldSince + most - now
	if left <= 0 {
		return 0
	}
	wait := max(h.lastAppendAt, h.lastWrite.Load()) + quiet - now
	if wait <= 0 {
		if !inFlight {
			return 0
		}
		// Nothing says when the writes in flight land: look again soon.
		wait = quiet / 4
	}
	return time.Duration(min(wait, left))
}

// publish tells the streams about the events held back.
func (h *Hub) publish() {
	h.heldSince = 0
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.published != h.next {
		h.published = h.next
		close(h.changed)
		h.changed = make(chan struct{})
	}
}

// follow reads the events the store committed since the ring's end.
func (h *Hub) follow() {
	for {
		select {
		case <-h.stopC:
			return
		default:
		}
		rev := h.store.Rev()
		next, serving := h.hold(rev)
		if !serving {
			return
		}
		if next > rev {
			return
		}
		evs, n, err := h.store.FollowEvents(next, readBatchEvents)
		if errors.Is(err, mvcc.ErrCompacted) {
			// The store moved past the ring underneath it (a Raft
			// snapshot installed a compacted state): continue from the
			// oldest revision it still has. Watchers that were behind
			// it learn that they were compacted.
			h.reset(h.store.EventsFrom())
			continue
		}
		if err != nil {
			h.logger.Error("watch: reading events failed; retrying on the next commit", "from", next, "err", err)
			return
		}
		h.append(next, n, evs)
	}
}

// hold holds the events from the next revision the hub reads, and returns
// it, while streams are open. With none (serving false), the hub keeps
// nothing, holds nothing, and starts from the present (after rev, the
// store's revision) when a stream opens.
func (h *Hub) hold(rev int64) (next int64, serving bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.streams == 0 {
		h.resetLocked(rev + 1)
		h.holdEventsLocked(0)
		return 0, false
	}
	h.holdEventsLocked(h.next)
	return h.next, true
}

// holdEventsLocked keeps compaction from deleting the events the hub has
// yet to read (see mvcc.Store.HoldEvents): a compaction applied before the
// hub has read the revisions it covers must not take them from in-sync
// watchers. It is called under mu, where streams changes: the first stream
// to open takes the hold at once (see addStream), not when the hub next
// wakes, which may be after such a compaction.
func (h *Hub) holdEventsLocked(rev int64) {
	if rev != h.held {
		h.held = rev
		h.store.HoldEvents(rev)
	}
}

func (h *Hub) reset(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resetLocked(rev)
}

func (h *Hub) resetLocked(rev int64) {
	if h.from == rev && h.next == rev && len(h.ring) == 0 {
		return
	}
	clear(h.ring)
	h.ring, h.ringEvents, h.from, h.next, h.published = h.ring[:0], 0, rev, rev, rev
	close(h.changed)
	h.changed = make(chan struct{})
}

// append adds the events of revisions [from, next), read from the store.
func (h *Hub) append(from, next int64, evs []*mvccpb.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if from != h.next {
		return // the ring was reset meanwhile
	}
	for len(evs) > 0 {
		rev := evs[0].Kv.ModRevision
		n := 1
		for n < len(evs) && evs[n].Kv.ModRevision == rev {
			n++
		}
		h.ring = append(h.ring, revEvents{rev: rev, evs: evs[:n:n]})
		h.ringEvents += n
		evs = evs[n:]
	}
	for len(h.ring) > 1 && h.ringEvents > h.cfg.RingEvents {
		h.ringEvents -= len(h.ring[0].evs)
		h.from = h.ring[0].rev + 1
		h.ring[0] = revEvents{}
		h.ring = h.ring[1:]
	}
	h.next = next
	h.prevAppendAt, h.lastAppendAt = h.lastAppendAt, h.clock()
}

// state returns the channel closed on the ring's next change and the
// revision the ring has read up to (exclusive).
func (h *Hub) state() (changed <-chan struct{}, next int64) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.changed, h.next
}

// collect returns the events of revisions from on that match, from the
// ring, stopping at a revision boundary once it has limit events, and next,
// the first revision not looked at. ok is false when the ring no longer
// holds revision from: the caller reads the store instead.
func (h *Hub) collect(from int64, limit int, match func(key []byte) bool) (evs []*mvccpb.Event, next int64, ok bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if from < h.from {
		return nil, 0, false
	}
	evs, next = gather(h.ring, h.next, from, limit, match)
	return evs, next, true
}

// window appends to dst the ring's revisions from from on, for a round of a
// stream to read without the lock, and returns them with the ring's end
// (exclusive); ok is false when the ring no longer holds revision from. The
// events are shared, never changed.
func (h *Hub) window(dst []revEvents, from int64) (win []revEvents, end int64, ok bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if from < h.from {
		return dst, 0, false
	}
	i := sort.Search(len(h.ring), func(i int) bool { return h.ring[i].rev >= from })
	return append(dst, h.ring[i:]...), h.next, true
}

// gather returns the events of revisions from on in ring, a run of the ring
// that ends before revision end, that match, stopping at a revision boundary
// once it has limit events, and the first revision it did not look at.
func gather(ring []revEvents, end, from int64, limit int, match func(key []byte) bool) (evs []*mvccpb.Event, next int64) {
	if from >= end {
		return nil, from
	}
	next = end
	i := sort.Search(len(ring), func(i int) bool { return ring[i].rev >= from })
	for ; i < len(ring); i++ {
		g := ring[i]
		if len(evs) >= limit {
			next = g.rev
			break
		}
		for _, ev := range g.evs {
			if match(ev.Kv.Key) {
				evs = append(evs, ev)
			}
		}
	}
	return evs, next
}

func (h *Hub) addStream() {
	h.mu.Lock()
	h.streams++
	h.holdEventsLocked(h.next)
	h.mu.Unlock()
	h.Notify()
}

func (h *Hub) removeStream() {
	h.mu.Lock()
	h.streams--
	h.mu.Unlock()
}
