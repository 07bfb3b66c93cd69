package main

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// Global flags come from ETCDCTL_ variables as in etcdctl, and a flag given
// both ways is refused.
func TestGlobalFlagsFromEnvironment(t *testing.T) {
	ep := testServer(t)
	key := fmt.Sprintf("env-%d", time.Now().UnixNano())
	ok(t, ep, "", "put", key, "v")
	t.Setenv("ETCDCTL_ENDPOINTS", ep)
	t.Setenv("ETCDCTL_WRITE_OUT", "json")
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"get", key}, strings.NewReader(""), &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), `{"header":`) {
		t.Fatalf("get with the endpoint and format from the environment: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	r := ctl(t, ep, "", "get", key) // ctl passes --endpoints too
	if r.code != exitError || !strings.Contains(r.err, "conflicting environment variable ETCDCTL_ENDPOINTS") {
		t.Fatalf("--endpoints and ETCDCTL_ENDPOINTS both: exit %d, stderr %q", r.code, r.err)
	}
	t.Setenv("ETCDCTL_ENDPOINTS", "")
	t.Setenv("ETCDCTL_DIAL_TIMEOUT", "soon")
	out.Reset()
	errOut.Reset()
	if code := run(context.Background(), []string{"get", key}, strings.NewReader(""), &out, &errOut); code != exitBadArgs || !strings.Contains(errOut.String(), "ETCDCTL_DIAL_TIMEOUT") {
		t.Fatalf("a bad ETCDCTL_DIAL_TIMEOUT: exit %d, stderr %q", code, errOut.String())
	}
}

// A watch's key and range end come from ETCDCTL_WATCH_KEY and
// ETCDCTL_WATCH_RANGE_END when the command line has none, with etcdctl's
// refusals.
func TestWatchKeyFromEnvironment(t *testing.T) {
	for _, c := range []struct {
		key, end string
		args     []string
		want     []string
		err      string
	}{
		{args: []string{"a"}, want: []string{"a"}},
		{key: "k", want: []string{"k"}},
		{key: "k", end: "z", want: []string{"k", "z"}},
		{key: "k", args: []string{"a"}, err: "found conflicting environment key"},
		{end: "z", args: []string{"a"}, err: `ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END="z"`},
	} {
		t.Setenv("ETCDCTL_WATCH_KEY", c.key)
		t.Setenv("ETCDCTL_WATCH_RANGE_END", c.end)
		got, err := watchKeyFromEnv(c.args)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || exitCode(err) != exitBadArgs):
			t.Errorf("key %q end %q args %q: error %v, want exit %d and %q", c.key, c.end, c.args, err, exitBadArgs, c.err)
		case c.err == "" && (err != nil || !slices.Equal(got, c.want)):
			t.Errorf("key %q end %q args %q: %q, %v; want %q", c.key, c.end, c.args, got, err, c.want)
		}
	}
}
