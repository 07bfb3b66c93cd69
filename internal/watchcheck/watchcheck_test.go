package watchcheck

import (
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// history: w/a=1 (2), then at revision 3 a txn putting w/b and deleting
// w/a, then w/b=2 (4).
func testHistory() []*mvccpb.Event {
	kv := func(key, value string, create, mod, version int64) *mvccpb.KeyValue {
		return &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: create, ModRevision: mod, Version: version}
	}
	return []*mvccpb.Event{
		{Type: mvccpb.PUT, Kv: kv("w/a", "1", 2, 2, 1)},
		{Type: mvccpb.PUT, Kv: kv("w/b", "1", 3, 3, 1)},
		{Type: mvccpb.DELETE, Kv: kv("w/a", "", 0, 3, 0)},
		{Type: mvccpb.PUT, Kv: kv("w/b", "2", 3, 4, 2)},
	}
}

func withPrev(ev *mvccpb.Event, prev *mvccpb.KeyValue) *mvccpb.Event {
	return &mvccpb.Event{Type: ev.Type, Kv: ev.Kv, PrevKv: prev}
}

// TestCheckCatches shows each guarantee of the package failing on a stream
// that breaks it, and a right stream passing.
func TestCheckCatches(t *testing.T) {
	h := testHistory()
	whole := Specs("w/")[0]
	resps := func(rs ...Response) *Recorder { return &Recorder{resps: rs} }
	evs := func(es ...*mvccpb.Event) Response { return Response{Events: es} }
	for _, c := range []struct {
		name string
		spec Spec
		rec  *Recorder
		want string // "" for no violation
	}{
		{"right", whole, resps(evs(h[0]), Response{Progress: 2}, evs(h[1], h[2]), evs(h[3])), ""},
		{"right with prev_kv", whole.WithPrevKV(), resps(evs(h[0]), evs(h[1], withPrev(h[2], h[0].Kv)), evs(withPrev(h[3], h[1].Kv))), ""},
		{"gap", whole, resps(evs(h[0]), evs(h[3])), "reliable: PUT w/b=\"1\" at revision 3 missing"},
		{"duplicate", whole, resps(evs(h[0]), evs(h[0]), evs(h[1], h[2]), evs(h[3])), "unique: PUT w/a at revision 2 delivered twice"},
		{"split revision", whole, resps(evs(h[0], h[1]), evs(h[2], h[3])), "atomic: revision 3 split"},
		{"out of order", whole, resps(evs(h[1], h[2]), evs(h[0]), evs(h[3])), "ordered: revision 2 delivered after 3"},
		{"bookmark passed", whole, resps(evs(h[0]), Response{Progress: 3}, evs(h[1], h[2]), evs(h[3])), "bookmarkable: event w/b at revision 3"},
		{"stray", whole, resps(evs(h[0]), evs(h[1], h[2]), evs(withPrev(h[3], nil)), evs(&mvccpb.Event{Kv: &mvccpb.KeyValue{Key: []byte("w/z"), ModRevision: 5}})), "not in the committed history"},
		{"prev_kv wrong", whole.WithPrevKV(), resps(evs(h[0]), evs(h[1], h[2]), evs(withPrev(h[3], h[1].Kv))), "prev_kv of w/a at revision 3"},
		{"other range", Specs("w/")[2], resps(evs(h[0])), "not in the committed history"},
	} {
		t.Run(c.name, func(t *testing.T) {
			errs := Check(c.name, c.spec, c.rec, h, 1)
			got := strings.Join(errs, "\n")
			if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
				t.Fatalf("violations:\n%s\nwant one with %q", got, c.want)
			}
		})
	}
	// A resumed watcher's parts, joined, make up the history.
	first, second := resps(evs(h[0]), Response{Progress: 2}), resps(evs(h[1], h[2]), evs(h[3]))
	if r := second.Resume(1); r != 5 {
		t.Fatalf("resume after revision 4: from %d", r)
	}
	if r := first.Resume(1); r != 3 {
		t.Fatalf("resume after a progress notification at 2: from %d", r)
	}
	if errs := Check("joined", whole, Join(first, second), h, 1); len(errs) > 0 {
		t.Fatal(errs)
	}
}
