package crash

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The shape of the load: which workers run and which keys each one owns.
// A key of kinds p, d and t is written by one worker only, so the order in
// which its writes were issued is the order in which the log holds them.
const (
	// Each puts its own p keys. Forty of them keep ~45 writes in flight,
	// so Readies carry tens of entries and now and then reach raftnode's
	// loadedBatch (32), where group commit holds the next sync back.
	putWorkers  = 40
	putKeys     = 3
	delWorkers  = 1 // puts and deletes its own d keys, one at a time or by prefix
	delKeys     = 4
	txnWorkers  = 1 // writes pairs of t keys in one txn
	txnPairs    = 3
	incrWorkers = 2 // increment the shared counters by compare-and-swap txns
	counters    = 2
	// Each reads the p keys of a share of the put workers (putWorkers
	// must be a multiple of it), with linearizable gets.
	readWorkers = 20
)

func pKey(w, k int) string { return fmt.Sprintf("crash/p/%d/%d", w, k) }
func dKey(w, k int) string { return fmt.Sprintf("crash/d/%d/%d", w, k) }
func dPrefix(w int) string { return fmt.Sprintf("crash/d/%d/", w) }
func tKey(w, i int, side string) string {
	return fmt.Sprintf("crash/t/%d/%d/%s", w, i, side)
}
func cKey(c int) string             { return fmt.Sprintf("crash/c/%d", c) }
func clogKey(c int, n int64) string { return fmt.Sprintf("crash/clog/%d/%08d", c, n) }

type opKind int

const (
	opPut          opKind = iota // keys[0] = value
	opDelete                     // delete keys[0]
	opDeletePrefix               // delete every key under keys[0]
	opTxnPair                    // txn: keys[0] = keys[1] = value
	opIncr                       // txn: if mod(keys[0]) == the one read then keys[0] = value (counter n), keys[1] (clog) = "op<id>"
	opRead                       // linearizable get of keys[0]; value = what it read ("" when absent)
	opCompact                    // compact the whole key space at compactRev; keys is empty
)

func (k opKind) String() string {
	return [...]string{"put", "delete", "delete-prefix", "txn-pair", "incr", "read", "compact"}[k]
}

// kvSnap is the part of a key-value the checks compare.
type kvSnap struct {
	key     string
	value   string
	create  int64
	mod     int64
	version int64
}

func snap(kv *mvccpb.KeyValue) kvSnap {
	return kvSnap{key: string(kv.Key), value: string(kv.Value), create: kv.CreateRevision, mod: kv.ModRevision, version: kv.Version}
}

func (s kvSnap) String() string {
	return fmt.Sprintf("%s=%q create=%d mod=%d version=%d", s.key, s.value, s.create, s.mod, s.version)
}

// op is one write request and what its client was told. Every value an op
// writes starts with "op<id>", so any value read back names the op that wrote
// it.
type op struct {
	id      int64
	kind    opKind
	worker  int
	cycle   int
	keys    []string
	value   string
	counter int   // opIncr
	n       int64 // opIncr: the counter value it writes
	// opCompact: the revision it compacts at, and whether it asked to
	// wait for the physical compaction.
	compactRev int64
	physical   bool
	start      time.Time
	end        time.Time

	acked   bool     // the client got an answer
	wrote   bool     // acked, and the answer says it created a revision
	rev     int64    // acked: the header revision of the answer (0 for a compaction refused as already compacted)
	prev    *kvSnap  // acked put: the previous key-value (WithPrevKV); acked read: what it read
	deleted []kvSnap // acked delete: the key-values it deleted (WithPrevKV)
	err     error    // not acked: why

	// The fate of an unacknowledged op, once a check after a restart
	// decided it: applied (at appliedRev) or not. It must never change.
	resolved   bool
	applied    bool
	appliedRev int64
}

func (o *op) String() string {
	s := fmt.Sprintf("op%d %s %v (cycle %d, worker %d)", o.id, o.kind, o.keys, o.cycle, o.worker)
	if o.kind == opCompact {
		s = fmt.Sprintf("op%d compact at %d physical=%v (cycle %d, worker %d)", o.id, o.compactRev, o.physical, o.cycle, o.worker)
	}
	switch {
	case o.acked:
		s += fmt.Sprintf(" acked rev=%d wrote=%v", o.rev, o.wrote)
	default:
		s += fmt.Sprintf(" unacknowledged (%v)", o.err)
	}
	return s
}

func opValue(id int64) string { return "op" + strconv.FormatInt(id, 10) }

// opIDOf returns the id of the op that wrote value.
func opIDOf(value string) (int64, bool) {
	v, ok := strings.CutPrefix(value, "op")
	if !ok {
		return 0, false
	}
	v, _, _ = strings.Cut(v, ":")
	id, err := strconv.ParseInt(v, 10, 64)
	return id, err == nil
}

// counterOf returns the counter value n of a counter value "op<id>:<n>".
func counterOf(value string) (int64, bool) {
	_, v, ok := strings.Cut(value, ":")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// history records every op of every cycle. An op's outcome fields are written
// by the worker that issued it and read by the checks only after every worker
// of the cycle returned.
type history struct {
	epoch time.Time  // op times are taken relative to it for porcupine
	mu    sync.Mutex // guards the fields below
	last  int64
	ops   []*op
	byID  map[int64]*op
	byKey map[string][]*op // ops on p, d and t keys (t: by the a key), in issue order
}

func newHistory() *history {
	return &history{epoch: time.Now(), byID: map[int64]*op{}, byKey: map[string][]*op{}}
}

// begin records a new op issued now.
func (h *history) begin(kind opKind, cycle, worker int, keys ...string) *op {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last++
	o := &op{id: h.last, kind: kind, cycle: cycle, worker: worker, keys: keys, value: opValue(h.last), start: time.Now()}
	h.ops = append(h.ops, o)
	h.byID[o.id] = o
	if kind != opIncr && kind != opCompact {
		h.byKey[keys[0]] = append(h.byKey[keys[0]], o)
	}
	return o
}

// addRead records a read that got an answer. Reads without one tell
// nothing and are not recorded; reads stay out of byKey.
func (h *history) addRead(o *op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last++
	o.id = h.last
	h.ops = append(h.ops, o)
	h.byID[o.id] = o
}

func (h *history) get(id int64) *op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.byID[id]
}

// snapshot returns the ops recorded so far.
func (h *history) snapshot() []*op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*op(nil), h.ops...)
}

// compactFloors returns the newest revision any compaction so far asked for,
// acknowledged or not (reads below it may fail as compacted), and the newest
// one an acknowledged compaction asked for (reads below it must fail so).
func (h *history) compactFloors() (issued, acked int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, o := range h.ops {
		if o.kind != opCompact {
			continue
		}
		issued = max(issued, o.compactRev)
		if o.acked {
			acked = max(acked, o.compactRev)
		}
	}
	return issued, acked
}

func (h *history) keyOps(key string) []*op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*op(nil), h.byKey[key]...)
}
