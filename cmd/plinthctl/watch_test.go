package main

import (
	"bytes"
	"context"
	"fmt"
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
