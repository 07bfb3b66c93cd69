package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a buffer that a running command writes while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitOutput waits, for 20 s at most, until out ends with tail, or holds
// it past its first n bytes when n >= 0.
func waitOutput(out *lockedBuffer, tail string, n ...int) bool {
	deadline := time.Now().Add(20 * time.Second)
	has := func() bool {
		if len(n) > 0 {
			s := out.String()
			return len(s) > n[0] && strings.Contains(s[n[0]:], tail)
		}
		return strings.HasSuffix(out.String(), tail)
	}
	for !has() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// watchUntil runs plinthctl watch with args until its output is want, or
// ends with it when want starts with "...", or 20 s pass; then it
// interrupts the watch and returns what it printed.
func watchUntil(t *testing.T, ep, want string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut lockedBuffer
	done := make(chan int)
	go func() {
		done <- run(ctx, append([]string{"--endpoints", ep, "watch"}, args...), strings.NewReader(""), &out, &errOut)
	}()
	deadline := time.Now().Add(20 * time.Second)
	reached := func() bool {
		if tail, ok := strings.CutPrefix(want, "..."); ok {
			return strings.HasSuffix(out.String(), tail)
		}
		return out.String() == want
	}
	for !reached() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 || errOut.String() != "" {
		t.Errorf("watch %q: exit %d, stderr %q", args, code, errOut.String())
	}
	return out.String()
}

func TestWatchCommand(t *testing.T) {
	ep := testServer(t)
	p := fmt.Sprintf("watch-%d/", time.Now().UnixNano())
	ok(t, ep, "", "put", p+"a", "1")
	first := getJSON(t, ep, p+"a").Header.Revision
	ok(t, ep, "", "put", p+"b", "1")
	ok(t, ep, "", "put", p+"a", "2")
	ok(t, ep, "", "del", p+"b")
	rev := strconv.FormatInt(first, 10)

	want := "PUT\n" + p + "a\n1\nPUT\n" + p + "b\n1\nPUT\n" + p + "a\n1\n" + p + "a\n2\nDELETE\n" + p + "b\n1\n" + p + "b\n\n"
	if got := watchUntil(t, ep, want, "--prefix", "--rev", rev, "--prev-kv", p); got != want {
		t.Errorf("watch --prefix --prev-kv:\ngot  %q\nwant %q", got, want)
	}
	want = "PUT\n" + p + "a\n1\nPUT\n" + p + "a\n2\n"
	if got := watchUntil(t, ep, want, "--rev", rev, p+"a"); got != want {
		t.Errorf("watch key:\ngot  %q\nwant %q", got, want)
	}
	fields := watchUntil(t, ep, `..."Value" : "2"`+"\n\"Lease\" : 0\n", "-w", "fields", "--rev", rev, p+"a", p+"b")
	for _, line := range []string{`"Type" : PUT`, `"Key" : "` + p + `a"`, `"Value" : "2"`, `"Revision" : `} {
		if !strings.Contains(fields, line) {
			t.Errorf("watch -w fields lacks %q:\n%s", line, fields)
		}
	}

	js := watchUntil(t, ep, `..."Canceled":false,"Created":false}`+"\n", "-w", "json", "--rev", rev, p+"b")
	if !strings.Contains(js, `"Events":[{"kv":{"key":`) {
		t.Errorf("watch -w json: %s", js)
	}

	// A watch from a compacted revision ends with the server's reason.
	cur := getJSON(t, ep, p+"a").Header.Revision
	ok(t, ep, "", "compaction", strconv.FormatInt(cur, 10))
	wantFail(t, ep, exitError, "watch was canceled (etcdserver: mvcc: required revision has been compacted)", "watch", "--rev", rev, p+"a")
	wantFail(t, ep, exitBadArgs, "`--prefix` and `--from-key` cannot be set at the same time", "watch", "--prefix", "--from-key", p)
}

// TestWatchInteractive: watch -i reads watch and progress lines from
// standard input, as etcdctl's does: each watch line starts a watch (with
// its own flags), each progress line gets every watch a progress
// notification, and a bad line is reported and skipped.
func TestWatchInteractive(t *testing.T) {
	ep := testServer(t)
	p := fmt.Sprintf("watch-i-%d/", time.Now().UnixNano())
	ok(t, ep, "", "put", p+"a", "1")
	first := getJSON(t, ep, p+"a").Header.Revision
	ok(t, ep, "", "put", p+"b", "1")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in, lines := io.Pipe()
	defer lines.Close()
	var out, errOut lockedBuffer
	done := make(chan int)
	go func() { done <- run(ctx, []string{"--endpoints", ep, "watch", "-i"}, in, &out, &errOut) }()
	send := func(l string) {
		t.Helper()
		if _, err := io.WriteString(lines, l+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	send(fmt.Sprintf("watch --prefix --rev %d --prev-kv %s", first, p))
	want := "PUT\n" + p + "a\n1\nPUT\n" + p + "b\n1\n"
	if !waitOutput(&out, want) {
		t.Fatalf("after a watch line: %q, want %q", out.String(), want)
	}
	send("get " + p)
	send("watch --prefix --from-key " + p)
	send("watch " + p + "b")
	// The second watch is created before the put below is: a progress
	// request is answered only once every watch of the stream exists.
	send("progress")
	rev := getJSON(t, ep, p+"a").Header.Revision
	want += fmt.Sprintf("progress notify: %d\nprogress notify: %d\n", rev, rev)
	if !waitOutput(&out, want) {
		t.Fatalf("after progress: %q, want %q", out.String(), want)
	}
	before := len(out.String())
	ok(t, ep, "", "put", p+"b", "2")
	for _, tail := range []string{
		"PUT\n" + p + "b\n1\n" + p + "b\n2\n", // the prefix watch, with the previous value
		"PUT\n" + p + "b\n2\n",                // the key watch
	} {
		if !waitOutput(&out, tail, before) {
			t.Errorf("after a put: %q lacks %q", out.String(), tail)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("watch -i: exit %d", code)
	}
	for _, msg := range []string{"Invalid command get " + p + " (only support watch)", "Invalid command watch --prefix --from-key " + p} {
		if !strings.Contains(errOut.String(), msg) {
			t.Errorf("stderr %q lacks %q", errOut.String(), msg)
		}
	}

	// The end of the input ends it, with etcdctl's error.
	wantFail(t, ep, exitInvalidInput, "error reading watch request line: EOF", "watch", "-i")
	wantFail(t, ep, exitBadArgs, "takes no arguments", "watch", "-i", p)
	wantFail(t, ep, exitBadArgs, "bad number of arguments", "watch")
}

// A watch line of interactive mode may end with a command to run for each
// event, as etcdctl's may; a failed run ends the whole watch with exit code
// 1, and a "--" without a command is refused at once.
func TestWatchInteractiveCommand(t *testing.T) {
	ep := testServer(t)
	p := fmt.Sprintf("watch-i-exec-%d/", time.Now().UnixNano())
	ok(t, ep, "", "put", p+"a", "1")
	rev := getJSON(t, ep, p+"a").Header.Revision

	var out, errOut lockedBuffer
	in, lines := io.Pipe()
	defer lines.Close()
	done := make(chan int)
	go func() {
		done <- run(context.Background(), []string{"--endpoints", ep, "watch", "-i"}, in, &out, &errOut)
	}()
	line := fmt.Sprintf("watch --rev %d %sa -- sh -c 'echo $ETCD_WATCH_REVISION $ETCD_WATCH_KEY; exit 4'\n", rev, p)
	if _, err := io.WriteString(lines, line); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		want := fmt.Sprintf("PUT\n%sa\n1\n%d \"%sa\"\n", p, rev, p)
		if code != exitError || out.String() != want || !strings.Contains(errOut.String(), `error (exit status 4)`) {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit %d, stdout %q and the command's failure", code, out.String(), errOut.String(), exitError, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the watch did not end when its command failed: stdout %q, stderr %q", out.String(), errOut.String())
	}
	if r := ctl(t, ep, "watch "+p+"a --\n", "watch", "-i"); r.code != exitBadArgs || !strings.Contains(r.err, "found separator --, but no commands") {
		t.Errorf("a watch line ending in --: exit %d, stderr %q", r.code, r.err)
	}
}
