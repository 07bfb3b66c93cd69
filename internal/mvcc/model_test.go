package mvcc

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// model is a plain in-memory statement of etcd's KV semantics: the full key
// space after every revision, and every version ever written.
type model struct {
	states   []map[string]*mvccpb.KeyValue // states[rev]; states[0] is unused
	versions map[string]map[int64]bool     // key -> revision -> tombstone
	compact  int64
	// events[rev] are the changes of revision rev, in etcd's order;
	// twice[rev] marks a revision that put one key twice, which the API
	// forbids and whose events are therefore not checked.
	events [][]*mvccpb.Event
	twice  map[int64]bool
}

func newModel() *model {
	return &model{states: []map[string]*mvccpb.KeyValue{nil, {}}, versions: map[string]map[int64]bool{}, compact: -1, events: make([][]*mvccpb.Event, 2), twice: map[int64]bool{}}
}

func (m *model) rev() int64 { return int64(len(m.states) - 1) }

// modelTxn applies one write request's operations at the next revision.
type modelTxn struct {
	m       *model
	cur     map[string]*mvccpb.KeyValue
	rev     int64
	changed bool
	events  []*mvccpb.Event
	put1    map[string]bool
}

func (m *model) begin() *modelTxn {
	cur := map[string]*mvccpb.KeyValue{}
	for k, v := range m.states[m.rev()] {
		cur[k] = v
	}
	return &modelTxn{m: m, cur: cur, rev: m.rev() + 1}
}

func (t *modelTxn) put(key, value string) {
	kv := &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: t.rev, ModRevision: t.rev, Version: 1}
	if value == "" {
		kv.Value = nil
	}
	if prev, ok := t.cur[key]; ok {
		kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
	}
	t.cur[key] = kv
	t.mark(key, false)
	t.events = append(t.events, &mvccpb.Event{Type: mvccpb.PUT, Kv: kv})
	if t.put1 == nil {
		t.put1 = map[string]bool{}
	}
	if t.put1[key] {
		t.m.twice[t.rev] = true
	}
	t.put1[key] = true
}

func (t *modelTxn) mark(key string, tomb bool) {
	if t.m.versions[key] == nil {
		t.m.versions[key] = map[int64]bool{}
	}
	t.m.versions[key][t.rev] = tomb
	t.changed = true
}

func inSpan(k, key, end string) bool {
	switch end {
	case "":
		return k == key
	case "\x00":
		return k >= key
	}
	return k >= key && k < end
}

func (t *modelTxn) del(key, end string) {
	var deleted []string
	for k := range t.cur {
		if inSpan(k, key, end) {
			deleted = append(deleted, k)
		}
	}
	sort.Strings(deleted)
	for _, k := range deleted {
		delete(t.cur, k)
		t.mark(k, true)
		t.events = append(t.events, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(k), ModRevision: t.rev}})
	}
}

func (t *modelTxn) end() {
	if t.changed {
		t.m.states = append(t.m.states, t.cur)
		t.m.events = append(t.m.events, t.events)
	}
}

func (m *model) rangeAt(rev int64, key, end string) []*mvccpb.KeyValue {
	var out []*mvccpb.KeyValue
	for k, kv := range m.states[rev] {
		if inSpan(k, key, end) {
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}

// compactAt drops the versions a compaction at rev makes unreachable: for
// each key, those older than its newest version at or before rev, and that
// one too when it is a tombstone.
func (m *model) compactAt(rev int64) {
	for k, vs := range m.versions {
		newest := int64(-1)
		for r := range vs {
			if r <= rev && r > newest {
				newest = r
			}
		}
		if newest < 0 {
			continue
		}
		for r := range vs {
			if r < newest {
				delete(vs, r)
			}
		}
		if vs[newest] {
			delete(vs, newest)
		}
		if len(vs) == 0 {
			delete(m.versions, k)
		}
	}
}

// historyLayout lists, per key, the revisions the history space must hold:
// every version not yet compacted away, except a live first version, which
// is in the latest space only. Newest first, as history sorts them.
func (m *model) historyLayout() map[string][]int64 {
	out := map[string][]int64{}
	live := m.states[m.rev()]
	for k, vs := range m.versions {
		var revs []int64
		for r := range vs {
			if kv, ok := live[k]; ok && kv.ModRevision == r && kv.Version == 1 {
				continue
			}
			revs = append(revs, r)
		}
		if len(revs) > 0 {
			sort.Slice(revs, func(i, j int) bool { return revs[i] > revs[j] })
			out[k] = revs
		}
	}
	return out
}

var modelKeys = []string{"\x00", "\x00\xff", "a", "a\x00", "a\x00\x00", "a\x01", "ab", "a\xff", "b", "\xff", "\xff\x00", "\xff\xff"}

func randomEnd(r *rand.Rand) string {
	switch r.IntN(4) {
	case 0:
		return ""
	case 1:
		return "\x00"
	}
	return modelKeys[r.IntN(len(modelKeys))]
}

// TestModel drives a store and the model with the same random requests and
// compares every range answer at random past revisions, across compactions
// and a reopen.
func TestModel(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) { runModel(t, seed) })
	}
}

func runModel(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 42))
	ts := &testStore{t: t, dir: t.TempDir()}
	ts.open()
	t.Cleanup(ts.close)
	m := newModel()
	randKey := func() string { return modelKeys[r.IntN(len(modelKeys))] }

	checkRanges := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			rev := m.rev() - int64(r.IntN(int(min(m.rev(), 80))))
			key, end := randKey(), randomEnd(r)
			limit := int64(r.IntN(4))
			resp, err := ts.s.Range(&pb.RangeRequest{Key: []byte(key), RangeEnd: []byte(end), Revision: rev, Limit: limit})
			if rev < m.compact {
				if err != ErrCompacted {
					t.Fatalf("range at %d below compaction %d: %v", rev, m.compact, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("range [%q, %q) at %d: %v", key, end, rev, err)
			}
			want := m.rangeAt(rev, key, end)
			more := false
			if resp.Count != int64(len(want)) {
				t.Fatalf("range [%q, %q) at %d: count %d, want %d", key, end, rev, resp.Count, len(want))
			}
			if limit > 0 && int64(len(want)) > limit {
				want, more = want[:limit], true
			}
			if resp.More != more || len(resp.Kvs) != len(want) {
				t.Fatalf("range [%q, %q) at %d limit %d: got %q more %v, want %q more %v", key, end, rev, limit, keysOf(resp.Kvs), resp.More, keysOf(want), more)
			}
			for j := range want {
				if !proto.Equal(resp.Kvs[j], want[j]) {
					t.Fatalf("range [%q, %q) at %d: kv %d is %v, want %v", key, end, rev, j, resp.Kvs[j], want[j])
				}
			}
			// The same range streamed in descending key order walks the
			// key spaces backwards.
			var streamed []*mvccpb.KeyValue
			err = ts.s.RangeStream(&pb.RangeRequest{Key: []byte(key), RangeEnd: []byte(end), Revision: rev, SortOrder: pb.RangeRequest_DESCEND},
				func(r *pb.RangeResponse) error { streamed = append(streamed, r.Kvs...); return nil })
			if err != nil {
				t.Fatalf("range stream [%q, %q) at %d: %v", key, end, rev, err)
			}
			all := m.rangeAt(rev, key, end)
			slices.Reverse(all)
			if len(streamed) != len(all) {
				t.Fatalf("range stream [%q, %q) at %d descending: got %q, want %q", key, end, rev, keysOf(streamed), keysOf(all))
			}
			for j := range all {
				if !proto.Equal(streamed[j], all[j]) {
					t.Fatalf("range stream [%q, %q) at %d descending: kv %d is %v, want %v", key, end, rev, j, streamed[j], all[j])
				}
			}
		}
	}

	// checkEvents reads the events from random revisions through random
	// ranges and limits and compares them with the model's.
	checkEvents := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			from := m.rev() + 1 - int64(r.IntN(int(min(m.rev(), 60))))
			key, end := randKey(), randomEnd(r)
			limit := r.IntN(5)
			evs, next, err := ts.s.Events(from, limit, func(k []byte) bool { return inSpan(string(k), key, end) })
			if from < m.compact {
				if err != ErrCompacted {
					t.Fatalf("events from %d below compaction %d: %v", from, m.compact, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("events from %d: %v", from, err)
			}
			if next <= from && from <= m.rev() || next > m.rev()+1 {
				t.Fatalf("events from %d (revision %d): next %d", from, m.rev(), next)
			}
			if next <= m.rev() && (limit == 0 || len(evs) < limit) {
				t.Fatalf("events from %d limit %d: stopped at %d with %d events, revision %d", from, limit, next, len(evs), m.rev())
			}
			var want []*mvccpb.Event
			skip := false
			for rev := from; rev < next; rev++ {
				skip = skip || m.twice[rev]
				for _, ev := range m.events[rev] {
					if inSpan(string(ev.Kv.Key), key, end) {
						want = append(want, ev)
					}
				}
			}
			if skip {
				continue
			}
			if len(evs) != len(want) {
				t.Fatalf("events [%q, %q) from %d to %d: got %d events %v, want %d %v", key, end, from, next, len(evs), evs, len(want), want)
			}
			for j := range want {
				if !proto.Equal(evs[j], want[j]) {
					t.Fatalf("events [%q, %q) from %d: event %d is %v, want %v", key, end, from, j, evs[j], want[j])
				}
			}
		}
	}

	for step := 0; step < 600; step++ {
		b := ts.s.NewBatch()
		var dones []<-chan struct{}
		compactTo := int64(-2)
		for n := 1 + r.IntN(3); n > 0; n-- {
			mt := m.begin()
			switch op := r.IntN(60); {
			case op < 27:
				k, v := randKey(), fmt.Sprint(r.IntN(1000))
				if r.IntN(8) == 0 {
					v = ""
				}
				if _, err := b.Put(&pb.PutRequest{Key: []byte(k), Value: []byte(v)}, noLeases); err != nil {
					t.Fatal(err)
				}
				mt.put(k, v)
			case op < 39:
				k, e := randKey(), randomEnd(r)
				resp, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: []byte(e)})
				if err != nil {
					t.Fatal(err)
				}
				before := len(mt.cur)
				mt.del(k, e)
				if resp.Deleted != int64(before-len(mt.cur)) {
					t.Fatalf("delete [%q, %q): deleted %d, want %d", k, e, resp.Deleted, before-len(mt.cur))
				}
			case op < 59:
				var ops []*pb.RequestOp
				for i := r.IntN(4); i >= 0; i-- {
					if r.IntN(3) == 0 {
						k, e := randKey(), randomEnd(r)
						ops = append(ops, delOp(k, e))
						mt.del(k, e)
					} else {
						k, v := randKey(), fmt.Sprint(r.IntN(1000))
						ops = append(ops, putOp(k, v))
						mt.put(k, v)
					}
				}
				if _, err := b.Txn(&pb.TxnRequest{Success: ops}, noLeases); err != nil {
					t.Fatal(err)
				}
			default:
				rev := m.rev() - int64(r.IntN(5))
				_, done, err := b.Compact(rev)
				switch {
				case rev <= m.compact || rev <= compactTo:
					if err != ErrCompacted {
						t.Fatalf("compact %d after %d: %v, want ErrCompacted", rev, m.compact, err)
					}
				case err != nil:
					t.Fatalf("compact %d: %v", rev, err)
				default:
					compactTo = rev
					dones = append(dones, done)
				}
			}
			mt.end()
			if b.Rev() != m.rev() {
				t.Fatalf("batch at revision %d, model at %d", b.Rev(), m.rev())
			}
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		if compactTo > m.compact {
			m.compact = compactTo
		}
		for _, d := range dones {
			waitDone(t, d, compactTo)
		}
		if len(dones) > 0 {
			m.compactAt(compactTo)
			if first := ts.firstEventRev(); first != 0 && first < compactTo {
				t.Fatalf("compaction at %d left the events of revision %d", compactTo, first)
			}
		}
		want, got := m.historyLayout(), ts.historyVersions()
		if len(got) != len(want) {
			t.Fatalf("step %d (compaction %d): history has %d keys, want %d:\n got %v\nwant %v", step, m.compact, len(got), len(want), got, want)
		}
		for k, revs := range want {
			if !slices.Equal(got[k], revs) {
				t.Fatalf("step %d (compaction %d): history of %q is %v, want %v", step, m.compact, k, got[k], revs)
			}
		}
		if ts.s.Rev() != m.rev() {
			t.Fatalf("store at revision %d, model at %d", ts.s.Rev(), m.rev())
		}
		checkRanges(5)
		checkEvents(3)
		if step == 300 {
			ts.reopen()
			if ts.s.Rev() != m.rev() || ts.s.CompactRev() != max(m.compact, -1) {
				t.Fatalf("reopened at %d compacted %d, want %d, %d", ts.s.Rev(), ts.s.CompactRev(), m.rev(), m.compact)
			}
		}
	}
	t.Logf("ended at revision %d, compacted at %d", m.rev(), m.compact)
}

// TestConcurrentReadsDuringWrites runs readers at current and past revisions
// while one writer commits batches and compacts (meant for -race). Writer
// revision n puts key "k%04d" (n-1), so a read at revision n counts n-1 keys.
func TestConcurrentReadsDuringWrites(t *testing.T) {
	ts := newTestStore(t)
	s := ts.s
	const writes = 400
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 7))
			for !stop.Load() {
				cur := s.Rev()
				rev := cur - int64(r.IntN(int(cur)))
				resp, err := s.Range(&pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), Revision: rev, Limit: int64(r.IntN(3))})
				if err == ErrCompacted {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				if resp.Count != rev-1 {
					errs <- fmt.Errorf("range at %d counted %d keys, want %d", rev, resp.Count, rev-1)
					return
				}
				if resp.Header.Revision < rev {
					errs <- fmt.Errorf("range at %d answered header revision %d", rev, resp.Header.Revision)
					return
				}
			}
		}(uint64(i))
	}
	for n := 0; n < writes; n++ {
		b := s.NewBatch()
		if _, err := b.Put(&pb.PutRequest{Key: []byte(fmt.Sprintf("k%04d", n)), Value: []byte("v")}, noLeases); err != nil {
			t.Fatal(err)
		}
		if n%50 == 49 {
			if _, _, err := b.Compact(b.Rev() - 20); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
