package compat

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// watchStream is a raw Watch stream to one server, its responses gathered by
// a goroutine that ends with the test.
type watchStream struct {
	stream pb.Watch_WatchClient
	resps  chan *pb.WatchResponse
}

func openWatch(t *testing.T, s *server) *watchStream {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); _ = conn.Close() })
	stream, err := pb.NewWatchClient(conn).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &watchStream{stream: stream, resps: make(chan *pb.WatchResponse, 1000)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(w.resps)
				return
			}
			w.resps <- r
		}
	}()
	return w
}

// settle gathers the responses that arrive until none has for quiet.
func (w *watchStream) settle(quiet time.Duration) []*pb.WatchResponse {
	var out []*pb.WatchResponse
	for {
		select {
		case r, ok := <-w.resps:
			if !ok {
				return out
			}
			out = append(out, r)
		case <-time.After(quiet):
			return out
		}
	}
}

// normaliseWatch zeroes what must differ between two clusters (ids, term),
// after checking that the header carries them.
func normaliseWatch(r *pb.WatchResponse) (*pb.WatchResponse, string) {
	c := proto.Clone(r).(*pb.WatchResponse)
	if c.Header == nil || c.Header.ClusterId == 0 || c.Header.MemberId == 0 || c.Header.RaftTerm == 0 {
		return c, fmt.Sprintf("header lacks ids or term: %v", c.Header)
	}
	c.Header.ClusterId, c.Header.MemberId, c.Header.RaftTerm = 0, 0, 0
	return c, ""
}

// watchStep is a KV op sent to both servers, or a watch request sent on
// both streams; each is followed by comparing the responses both streams
// then produce.
type watchStep struct {
	op  *op
	req *pb.WatchRequest
}

func kvStep(o op) watchStep { return watchStep{op: &o} }

func createStep(cr *pb.WatchCreateRequest) watchStep {
	return watchStep{req: &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}}}
}

func cancelStep(id int64) watchStep {
	return watchStep{req: &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}}
}

func progressStep() watchStep {
	return watchStep{req: &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}}
}

func runWatchCase(t *testing.T, steps []watchStep) {
	p := startPair(t, oneMember)
	ref, tgt := openWatch(t, p.ref), openWatch(t, p.tgt)
	for i, s := range steps {
		what := ""
		if s.op != nil {
			if _, report := p.run(*s.op); report != "" {
				t.Fatalf("MISMATCH at step %d (KV)\n%s", i, report)
			}
			what = s.op.kind()
		} else {
			for _, w := range []*watchStream{ref, tgt} {
				if err := w.stream.Send(s.req); err != nil {
					t.Fatalf("step %d: send: %v", i, err)
				}
			}
			what = oneLine(s.req)
		}
		// etcd's watchers sync every 100 ms: wait past that.
		refResps, tgtResps := ref.settle(400*time.Millisecond), tgt.settle(400*time.Millisecond)
		// Each watcher's responses keep their order; etcd orders those
		// of different watchers of a stream as its maps iterate.
		for _, rs := range [][]*pb.WatchResponse{refResps, tgtResps} {
			sort.SliceStable(rs, func(i, j int) bool { return rs[i].WatchId < rs[j].WatchId })
		}
		var refText, tgtText []string
		for _, r := range refResps {
			n, problem := normaliseWatch(r)
			if problem != "" {
				t.Fatalf("step %d: etcd: %s", i, problem)
			}
			refText = append(refText, oneLine(n))
		}
		for _, r := range tgtResps {
			n, problem := normaliseWatch(r)
			if problem != "" {
				t.Fatalf("step %d: plinth: %s", i, problem)
			}
			tgtText = append(tgtText, oneLine(n))
		}
		if strings.Join(refText, "\n") != strings.Join(tgtText, "\n") {
			t.Fatalf("MISMATCH at step %d (%s)\netcd answered:\n%s\nplinth answered:\n%s", i, what,
				indent(strings.Join(refText, "\n")), indent(strings.Join(tgtText, "\n")))
		}
	}
}

func TestWatchCompat(t *testing.T) {
	cases := []struct {
		name  string
		steps []watchStep
	}{
		{"history, prev_kv and live events", []watchStep{
			kvStep(put("a", "1")), kvStep(put("b", "1")), kvStep(put("a", "2")),
			createStep(&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 2, PrevKv: true}),
			kvStep(put("a", "3")),
			kvStep(del("a", "")),
			kvStep(put("a", "4")),
		}},
		{"ranges and filters", []watchStep{
			createStep(&pb.WatchCreateRequest{Key: []byte("k/"), RangeEnd: []byte("k0")}),
			createStep(&pb.WatchCreateRequest{Key: []byte("k/2"), RangeEnd: []byte{0}, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}}),
			createStep(&pb.WatchCreateRequest{Key: []byte("k/1"), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}, PrevKv: true}),
			kvStep(put("k/1", "1")), kvStep(put("k/2", "1")), kvStep(put("k/3", "1")),
			kvStep(put("k/1", "2")),
			kvStep(txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("k/4", "1"), opDel("k/", "k0"), opPut("z", "1")}})),
			kvStep(del("k/", "\x00")),
		}},
		{"transaction order", []watchStep{
			kvStep(put("t/a", "1")), kvStep(put("t/c", "1")),
			createStep(&pb.WatchCreateRequest{Key: []byte("t/"), RangeEnd: []byte("t0"), PrevKv: true}),
			kvStep(txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("t/z", "1"), opDel("t/a", "t/d"), opPut("t/b", "2")}})),
			kvStep(txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("t/y", "1"), opDel("t/x", "\x00")}})),
			kvStep(txn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("t/", "\x00"), opPut("t/q", "1")}})),
		}},
		{"watch IDs, refusals and cancel", []watchStep{
			createStep(&pb.WatchCreateRequest{Key: []byte("a")}),
			createStep(&pb.WatchCreateRequest{Key: []byte("b"), WatchId: 5}),
			createStep(&pb.WatchCreateRequest{Key: []byte("c"), WatchId: 5}),
			createStep(&pb.WatchCreateRequest{Key: []byte("c")}),
			createStep(&pb.WatchCreateRequest{Key: []byte("x"), RangeEnd: []byte("a")}),
			kvStep(put("a", "1")), kvStep(put("b", "1")),
			cancelStep(5),
			cancelStep(5),
			cancelStep(99),
			kvStep(put("b", "2")), kvStep(put("a", "2")),
		}},
		{"compaction", []watchStep{
			kvStep(put("a", "1")), kvStep(put("a", "2")), kvStep(put("a", "3")), kvStep(put("a", "4")),
			kvStep(compact(4, true)),
			createStep(&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 2}),
			createStep(&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 4}),
			createStep(&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: 10}),
			kvStep(put("a", "5")),
			kvStep(put("a", "6")), kvStep(put("a", "7")), kvStep(put("a", "8")), kvStep(put("a", "9")),
		}},
		{"catch-up over many revisions", []watchStep{
			kvStep(put("p/1", "1")), kvStep(put("q", "1")), kvStep(put("p/2", "1")), kvStep(put("p/1", "2")),
			kvStep(del("p/2", "")), kvStep(put("q", "2")), kvStep(put("p/3", "1")), kvStep(put("p/1", "3")),
			createStep(&pb.WatchCreateRequest{Key: []byte("p/"), RangeEnd: []byte("p0"), StartRevision: 1, PrevKv: true}),
			createStep(&pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: 3}),
			kvStep(put("p/4", "1")),
		}},
		{"progress", []watchStep{
			progressStep(),
			kvStep(put("a", "1")),
			createStep(&pb.WatchCreateRequest{Key: []byte("a")}),
			progressStep(),
			kvStep(put("b", "1")),
			progressStep(),
			createStep(&pb.WatchCreateRequest{Key: []byte("b"), StartRevision: 1}),
			progressStep(),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // a case spends its time waiting for quiet
			runWatchCase(t, c.steps)
		})
	}
}

// TestWatchCompatFragments: a revision whose events, with their previous
// versions, pass the request size limit (1.5 MiB by default on both) arrives
// in fragments to a live watcher that asked for them, and whole to one that
// did not. A catch-up that large is left out: plinth cuts it at revision
// boundaries, each response headed by the revision it completes, where etcd
// sends it as one response headed by the current revision (docs/watch.md).
func TestWatchCompatFragments(t *testing.T) {
	t.Parallel()
	big := func(c byte) string { return strings.Repeat(string(c), 700<<10) }
	prefix := func(start int64, fragment bool) watchStep {
		return createStep(&pb.WatchCreateRequest{Key: []byte("f/"), RangeEnd: []byte("f0"), StartRevision: start, PrevKv: true, Fragment: fragment})
	}
	runWatchCase(t, []watchStep{
		kvStep(put("f/1", big('a'))), kvStep(put("f/2", big('b'))), kvStep(put("f/3", big('c'))),
		prefix(0, true),
		prefix(0, false),
		kvStep(del("f/", "f0")), // 2.1 MiB of previous values at one revision
		kvStep(put("f/4", "small")),
		prefix(5, true), // a catch-up of one large revision
		prefix(5, false),
	})
}

// TestWatchCompatProgressInterval: with --watch-progress-notify-interval
// set on both servers, a watcher that asked for progress notifications gets
// them while it is sent nothing, at the revision of the moment, and none
// right after it was sent events; a watcher that did not ask gets none.
// The two servers' tickers do not beat together, so repeated identical
// notifications count as one.
func TestWatchCompatProgressInterval(t *testing.T) {
	t.Parallel()
	const interval = 300 * time.Millisecond
	tune := func(c *embed.Config) { c.WatchProgressNotifyInterval = interval }
	var p pair
	p.ref = startEmbedded(t, "etcd", tune)
	if selftest {
		p.tgt = startEmbedded(t, "etcd-selftest", tune)
	} else {
		p.tgt = startBinary(t, "plinth", targetBin, "--watch-progress-notify-interval", interval.String())
	}
	ref, tgt := openWatch(t, p.ref), openWatch(t, p.tgt)
	var got [2][]string
	// gather waits a few intervals (each server must tick at least once
	// meanwhile, however loaded the machine), then takes what both
	// streams sent.
	gather := func() {
		t.Helper()
		time.Sleep(6 * interval)
		for i, w := range []*watchStream{ref, tgt} {
			for more := true; more; {
				select {
				case r, ok := <-w.resps:
					if !ok {
						t.Fatal("watch stream ended")
					}
					n, problem := normaliseWatch(r)
					if problem != "" {
						t.Fatal(problem)
					}
					got[i] = append(got[i], oneLine(n))
				default:
					more = false
				}
			}
		}
	}
	step := func(o op) {
		t.Helper()
		if _, report := p.run(o); report != "" {
			t.Fatalf("MISMATCH (KV)\n%s", report)
		}
		gather()
	}
	for _, cr := range []*pb.WatchCreateRequest{
		{Key: []byte("a"), ProgressNotify: true},
		{Key: []byte("a")},
		{Key: []byte("b"), ProgressNotify: true, StartRevision: 1},
	} {
		for _, w := range []*watchStream{ref, tgt} {
			if err := w.stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	gather()
	step(put("a", "1"))
	step(put("z", "1"))
	step(put("b", "1"))
	// Each watcher's responses keep their order; those of different
	// watchers interleave as the servers' timers go.
	for i := range got {
		sort.SliceStable(got[i], func(a, b int) bool { return watchIDOf(got[i][a]) < watchIDOf(got[i][b]) })
		got[i] = slices.Compact(got[i])
	}
	if strings.Join(got[0], "\n") != strings.Join(got[1], "\n") {
		t.Fatalf("MISMATCH\netcd sent:\n%s\n%s sent:\n%s", indent(strings.Join(got[0], "\n")), p.tgt.name, indent(strings.Join(got[1], "\n")))
	}
	if !strings.Contains(strings.Join(got[0], "\n"), "revision:4") {
		t.Fatalf("no progress notification at the last revision:\n%s", indent(strings.Join(got[0], "\n")))
	}
}

// watchIDOf reads the watch_id of a response as oneLine prints it (0 when
// it prints none).
func watchIDOf(line string) int64 {
	_, rest, ok := strings.Cut(line, "watch_id:")
	if !ok {
		return 0
	}
	var id int64
	fmt.Sscan(strings.TrimSpace(rest), &id)
	return id
}
