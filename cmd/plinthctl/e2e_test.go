package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinthdb/plinth/internal/testmember"
)

// The end-to-end tests run plinthctl's commands against a real server: by
// default a plinth built from this module (cmd/plinth) and started in a temp
// dir; with PLINTHCTL_TEST_ENDPOINT=host:port against that server instead
// (any etcd v3 server; the tests write keys under a fresh prefix and compact
// its history up to their own writes).

const endpointEnv = "PLINTHCTL_TEST_ENDPOINT"

// testServer returns the endpoint of a server for the test.
func testServer(t *testing.T) string {
	t.Helper()
	if ep := os.Getenv(endpointEnv); ep != "" {
		return ep
	}
	return startPlinth(t)
}

// startPlinth builds cmd/plinth, starts one member on free ports with its
// data in a temp dir, and returns its endpoint once it serves. The member is
// stopped when the test ends.
func startPlinth(t *testing.T) string {
	t.Helper()
	bin, err := testmember.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := testmember.New(t, bin)
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m.Endpoint()
}

// ctlResult is what one plinthctl run printed and its exit code.
type ctlResult struct {
	out, err string
	code     int
}

// ctl runs plinthctl in-process against ep with stdin and args.
func ctl(t *testing.T, ep, stdin string, args ...string) ctlResult {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append([]string{"--endpoints", ep}, args...)
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return ctlResult{out: out.String(), err: errOut.String(), code: code}
}

// ok runs plinthctl and fails the test unless it exits 0 with no stderr.
func ok(t *testing.T, ep, stdin string, args ...string) string {
	t.Helper()
	r := ctl(t, ep, stdin, args...)
	if r.code != 0 || r.err != "" {
		t.Fatalf("plinthctl %q: exit %d, stderr %q, stdout %q", args, r.code, r.err, r.out)
	}
	return r.out
}

// wantOut runs plinthctl and checks its exact stdout.
func wantOut(t *testing.T, ep, stdin, want string, args ...string) {
	t.Helper()
	if got := ok(t, ep, stdin, args...); got != want {
		t.Errorf("plinthctl %q:\ngot  %q\nwant %q", args, got, want)
	}
}

// wantFail runs plinthctl and checks that it fails with code and a stderr
// containing msg.
func wantFail(t *testing.T, ep string, code int, msg string, args ...string) {
	t.Helper()
	r := ctl(t, ep, "", args...)
	if r.code != code || !strings.Contains(r.err, msg) {
		t.Errorf("plinthctl %q: exit %d, stderr %q; want exit %d and stderr containing %q", args, r.code, r.err, code, msg)
	}
}

// jsonRange is the part of get -w json that the tests read.
type jsonRange struct {
	Header struct {
		ClusterID uint64 `json:"cluster_id"`
		MemberID  uint64 `json:"member_id"`
		Revision  int64  `json:"revision"`
		RaftTerm  uint64 `json:"raft_term"`
	} `json:"header"`
	Kvs []struct {
		Key            []byte `json:"key"` // base64 in the JSON
		Value          []byte `json:"value"`
		CreateRevision int64  `json:"create_revision"`
		ModRevision    int64  `json:"mod_revision"`
		Version        int64  `json:"version"`
		Lease          int64  `json:"lease"`
	} `json:"kvs"`
	More  bool  `json:"more"`
	Count int64 `json:"count"`
}

func getJSON(t *testing.T, ep string, args ...string) jsonRange {
	t.Helper()
	out := ok(t, ep, "", append([]string{"get", "-w", "json"}, args...)...)
	var r jsonRange
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("get -w json: %v in %q", err, out)
	}
	return r
}

func TestEndToEnd(t *testing.T) {
	ep := testServer(t)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := fmt.Sprintf("e2e-%d/", time.Now().UnixNano()) // every key of this run

	t.Run("put and get", func(t *testing.T) {
		wantOut(t, ep, "", "OK\n", "put", p+"a", "1")
		wantOut(t, ep, "", "OK\n"+p+"a\n1\n", "put", "--prev-kv", p+"a", "2")
		wantOut(t, ep, "from stdin\n", "OK\n", "put", p+"b")
		wantOut(t, ep, "", "OK\n", "put", "--", p+"c", "-3") // a value may start with '-' after --
		wantOut(t, ep, "", p+"a\n2\n", "get", p+"a")
		wantOut(t, ep, "", p+"b\nfrom stdin\n\n", "get", p+"b")
		wantOut(t, ep, "", "", "get", p+"missing")
		all := p + "a\n2\n" + p + "b\nfrom stdin\n\n" + p + "c\n-3\n"
		wantOut(t, ep, "", all, "get", "--prefix", p)
		wantOut(t, ep, "", all, "get", p+"a", p+"d")
		wantOut(t, ep, "", all, "get", "--from-key", p, "--limit", "3")
		wantOut(t, ep, "", all, "get", "--prefix", p, "--consistency", "s")
		wantOut(t, ep, "", p+"a\n\n"+p+"b\n\n"+p+"c\n\n", "get", "--prefix", "--keys-only", p)
		wantOut(t, ep, "", "2\nfrom stdin\n\n-3\n", "get", "--prefix", "--print-value-only", p)
		wantOut(t, ep, "", p+"a\n2\n", "get", "--prefix", "--limit", "1", p)
		wantOut(t, ep, "", p+"c\n-3\n"+p+"b\nfrom stdin\n\n"+p+"a\n2\n", "get", "--prefix", "--order", "DESCEND", p)
		wantOut(t, ep, "", p+"c\n-3\n", "get", "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND", "--limit", "1", p)
		wantOut(t, ep, "", p+"a\n2\n", "get", "--prefix", "--sort-by", "VERSION", "--order", "DESCEND", "--limit", "1", p)
		wantOut(t, ep, "", "3\n", "get", "--prefix", "--count-only", p)
		wantOut(t, ep, "", hexBytes([]byte(p+"a"))+"\n"+`\x32`+"\n", "get", p+"a", "--hex")
	})

	t.Run("range stream", func(t *testing.T) {
		r := ctl(t, ep, "", "get", "--prefix", "--stream", p)
		if r.code != 0 && strings.Contains(r.err, "method RangeStream not implemented") {
			t.Skipf("the server has no KV.RangeStream yet: %s", strings.TrimSpace(r.err))
		}
		all := p + "a\n2\n" + p + "b\nfrom stdin\n\n" + p + "c\n-3\n"
		if r.code != 0 || r.out != all {
			t.Errorf("get --prefix --stream: exit %d, stderr %q, stdout %q; want %q", r.code, r.err, r.out, all)
		}
		wantOut(t, ep, "", p+"a\n2\n", "get", "--prefix", "--stream", "--limit", "1", p)
		wantOut(t, ep, "", "3\n", "get", "--prefix", "--stream", "--count-only", p)
	})

	t.Run("revisions", func(t *testing.T) {
		r := getJSON(t, ep, p+"a")
		if len(r.Kvs) != 1 || r.Kvs[0].Version != 2 {
			t.Fatalf("get %sa: %+v, want one key at version 2", p, r)
		}
		first := r.Kvs[0].CreateRevision
		wantOut(t, ep, "", p+"a\n1\n", "get", p+"a", "--rev", strconv.FormatInt(first, 10))
		wantOut(t, ep, "", p+"a\n2\n", "get", "--prefix", p, "--min-mod-rev", strconv.FormatInt(first+1, 10), "--max-mod-rev", strconv.FormatInt(first+1, 10))
		wantOut(t, ep, "", p+"b\nfrom stdin\n\n"+p+"c\n-3\n", "get", "--prefix", p, "--min-create-rev", strconv.FormatInt(first+1, 10))
		wantOut(t, ep, "", p+"a\n2\n", "get", "--prefix", p, "--max-create-rev", strconv.FormatInt(first, 10))
	})

	t.Run("json is the range response", func(t *testing.T) {
		r := getJSON(t, ep, "--prefix", p)
		want, err := c.Get(ctx, p, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if r.Count != 3 || len(r.Kvs) != 3 || len(want.Kvs) != 3 {
			t.Fatalf("get -w json: %+v", r)
		}
		if r.Header.ClusterID != want.Header.ClusterId || r.Header.MemberID != want.Header.MemberId || r.Header.RaftTerm == 0 {
			t.Errorf("header %+v, want ids of %v", r.Header, want.Header)
		}
		for i, kv := range want.Kvs {
			got := r.Kvs[i]
			if string(got.Key) != string(kv.Key) || string(got.Value) != string(kv.Value) ||
				got.CreateRevision != kv.CreateRevision || got.ModRevision != kv.ModRevision || got.Version != kv.Version {
				t.Errorf("kv %d = %+v, want %v", i, got, kv)
			}
		}
		// Byte fields are base64 strings and integers are JSON numbers, as
		// etcdctl prints them.
		out := ok(t, ep, "", "get", "-w", "json", p+"a")
		wantKey := `"key":"` + base64.StdEncoding.EncodeToString([]byte(p+"a")) + `"`
		if !strings.Contains(out, wantKey) || !strings.Contains(out, `"value":"Mg=="`) || !strings.Contains(out, `"version":2,`) {
			t.Errorf("get -w json = %s; want %s, \"value\":\"Mg==\" and \"version\":2", out, wantKey)
		}
		if out := ok(t, ep, "", "get", "-w", "fields", p+"a"); !strings.Contains(out, `"Value" : "2"`+"\n") {
			t.Errorf("get -w fields = %s", out)
		}
		if out := ok(t, ep, "", "get", "-w", "table", p+"a"); !strings.Contains(out, "│ "+p+"a │ 2     │") {
			t.Errorf("get -w table = %s", out)
		}
	})

	t.Run("del", func(t *testing.T) {
		wantOut(t, ep, "", "OK\n", "put", p+"del/1", "x")
		wantOut(t, ep, "", "OK\n", "put", p+"del/2", "y")
		wantOut(t, ep, "", "OK\n", "put", p+"del/3", "z")
		wantOut(t, ep, "", "0\n", "del", p+"del/none")
		wantOut(t, ep, "", "1\n", "del", p+"del/1")
		wantOut(t, ep, "", "2\n"+p+"del/2\ny\n"+p+"del/3\nz\n", "del", "--prefix", "--prev-kv", p+"del/")
		wantOut(t, ep, "", "0\n", "del", p+"del/", p+"del0")
		out := ok(t, ep, "", "del", "-w", "json", p+"nothing")
		if !strings.HasPrefix(out, `{"header":{"cluster_id":`) || strings.Contains(out, "deleted") {
			t.Errorf("del -w json = %s; want a header and no deleted count (zero is left out)", out)
		}
	})

	t.Run("txn", func(t *testing.T) {
		in := fmt.Sprintf("mod(%q) > \"0\"\nvalue(%q) = \"2\"\n\nput %s v1 --prev-kv\nget %s\ndel %s\n\nput %s nope\n\n",
			p+"a", p+"a", p+"t1", p+"a", p+"none", p+"t1")
		wantOut(t, ep, in, "SUCCESS\n\nOK\n\n"+p+"a\n2\n\n0\n", "txn")
		in = fmt.Sprintf("version(%q) = \"0\"\n\nput %s nope\n\nput %s \"second value\" --prev-kv\nget %s\n\n",
			p+"t1", p+"t1", p+"t1", p+"b")
		wantOut(t, ep, in, "FAILURE\n\nOK\n"+p+"t1\nv1\n\n"+p+"b\nfrom stdin\n\n", "txn")
		wantOut(t, ep, "\nget "+p+"t1\n\n\n",
			"compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\n"+p+"t1\nsecond value\n", "txn", "-i")
		in = fmt.Sprintf("create(%q) = \"0\"\n\n\n\n", p+"t1")
		if out := ok(t, ep, in, "txn", "-w", "json"); !strings.HasPrefix(out, `{"header":{`) || strings.Contains(out, "succeeded") {
			t.Errorf("txn -w json (failed, no ops) = %s", out)
		}
		in = fmt.Sprintf("\nput %s 1\n\n", p+"t2")
		if out := ok(t, ep, in, "txn", "-w", "json"); !strings.Contains(out, `"succeeded":true,"responses":[{"Response":{"response_put":{"header":{"revision":`) {
			t.Errorf("txn -w json = %s", out)
		}

		r := ctl(t, ep, "bogus(\"k\") = \"1\"\n\n\n\n", "txn")
		if r.code != exitInvalidInput || !strings.Contains(r.err, "Error: txn: line 1: malformed comparison") {
			t.Errorf("txn with a bad compare: exit %d, stderr %q", r.code, r.err)
		}
		r = ctl(t, ep, fmt.Sprintf("\nput %s 1\ndel %s\n\n\n", p+"dup", p+"dup"), "txn")
		if r.code != exitError || r.err != "Error: etcdserver: duplicate key given in txn request\n" {
			t.Errorf("txn with a duplicate key: exit %d, stderr %q", r.code, r.err)
		}
		wantOut(t, ep, "", p+"t1\nsecond value\n", "get", p+"t1") // nothing above changed it
	})

	t.Run("lease", func(t *testing.T) {
		lease, err := c.Grant(ctx, 600)
		if status.Code(err) == codes.Unimplemented {
			t.Skipf("the server has no Lease service yet: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Revoke(context.Background(), lease.ID)
		id := strconv.FormatInt(int64(lease.ID), 16)
		wantOut(t, ep, "", "OK\n", "put", "--lease", id, p+"leased", "v")
		if r := getJSON(t, ep, p+"leased"); len(r.Kvs) != 1 || r.Kvs[0].Lease != int64(lease.ID) {
			t.Errorf("get -w json after put --lease=%s: %+v", id, r)
		}
		wantOut(t, ep, "", "OK\n", "put", "--ignore-lease", p+"leased", "w")
		if r := getJSON(t, ep, p+"leased"); len(r.Kvs) != 1 || r.Kvs[0].Lease != int64(lease.ID) || string(r.Kvs[0].Value) != "w" {
			t.Errorf("get after put --ignore-lease: %+v", r)
		}
		wantOut(t, ep, "", "OK\n", "put", "--ignore-value", p+"leased")
		if r := getJSON(t, ep, p+"leased"); len(r.Kvs) != 1 || r.Kvs[0].Lease != 0 || string(r.Kvs[0].Value) != "w" {
			t.Errorf("get after put --ignore-value (which drops the lease): %+v", r)
		}
		wantOut(t, ep, "", "OK\n", "put", "--ignore-value", "--lease", id, p+"leased")
		wantOut(t, ep, fmt.Sprintf("lease(%q) = %q\n\nget %s\n\n\n", p+"leased", id, p+"leased"), "SUCCESS\n\n"+p+"leased\nw\n", "txn")
		wantFail(t, ep, exitError, "Error: etcdserver: requested lease not found", "put", "--lease", "123abc", p+"x", "v")
		wantFail(t, ep, exitBadArgs, "Error: bad lease ID", "put", "--lease", "xyz", p+"x", "v")
		wantFail(t, ep, exitError, "Error: etcdserver: key not found", "put", "--ignore-value", p+"x")
	})

	t.Run("compaction", func(t *testing.T) {
		ok(t, ep, "", "put", p+"compact", "old")
		r := getJSON(t, ep, p+"compact")
		old := r.Header.Revision
		ok(t, ep, "", "put", p+"compact", "new")
		rev := strconv.FormatInt(old+1, 10)
		wantOut(t, ep, "", "compacted revision "+rev+"\n", "compaction", rev)
		wantFail(t, ep, exitError, "Error: etcdserver: mvcc: required revision has been compacted\n",
			"get", p+"compact", "--rev", strconv.FormatInt(old, 10))
		wantFail(t, ep, exitError, "Error: etcdserver: mvcc: required revision has been compacted\n", "compaction", rev)
		wantOut(t, ep, "", p+"compact\nnew\n", "get", p+"compact", "--rev", rev)
		ok(t, ep, "", "put", p+"compact", "newer")
		cur := getJSON(t, ep, p+"compact").Header.Revision
		wantOut(t, ep, "", fmt.Sprintf("compacted revision %d\n", cur), "compaction", "--physical", strconv.FormatInt(cur, 10))
		wantFail(t, ep, exitError, "Error: etcdserver: mvcc: required revision is a future revision\n", "compaction", strconv.FormatInt(cur+1000, 10))
		wantFail(t, ep, exitError, "Error: etcdserver: mvcc: required revision is a future revision\n", "get", p+"compact", "--rev", strconv.FormatInt(cur+1000, 10))
	})

	t.Run("endpoint status", func(t *testing.T) {
		want, err := c.Status(ctx, ep)
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("%x", want.Header.MemberId)
		out := ok(t, ep, "", "endpoint", "status", "-w", "table")
		lines := strings.Split(out, "\n")
		if len(lines) != 6 || !strings.Contains(lines[1], "ENDPOINT") || !strings.Contains(lines[1], "RAFT APPLIED INDEX │ ERRORS │") ||
			!strings.Contains(lines[3], "│ "+ep+" │ "+id+" │") || !strings.Contains(lines[3], "│      true │      false │") {
			t.Errorf("endpoint status -w table =\n%s", out)
		}
		out = ok(t, ep, "", "endpoint", "status")
		if !strings.HasPrefix(out, ep+", "+id+", "+want.Version+", ") || !strings.Contains(out, ", true, false, ") {
			t.Errorf("endpoint status = %q", out)
		}
		var st []struct {
			Endpoint string
			Status   struct {
				Header struct {
					MemberID uint64 `json:"member_id"`
				} `json:"header"`
				Version string `json:"version"`
				Leader  uint64 `json:"leader"`
				DBSize  int64  `json:"dbSize"`
			}
		}
		out = ok(t, ep, "", "endpoint", "status", "-w", "json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("endpoint status -w json: %v in %s", err, out)
		}
		if len(st) != 1 || st[0].Endpoint != ep || st[0].Status.Version != want.Version || st[0].Status.Leader != want.Header.MemberId ||
			st[0].Status.Header.MemberID != want.Header.MemberId || st[0].Status.DBSize <= 0 {
			t.Errorf("endpoint status -w json = %s", out)
		}
	})

	t.Run("endpoint health", func(t *testing.T) {
		out := ok(t, ep, "", "endpoint", "health")
		if !strings.HasPrefix(out, ep+" is healthy: successfully committed proposal: took = ") || strings.Count(out, "\n") != 1 {
			t.Errorf("endpoint health = %q", out)
		}
		var hs []endpointHealth
		out = ok(t, ep, "", "endpoint", "health", "-w", "json")
		if err := json.Unmarshal([]byte(out), &hs); err != nil || len(hs) != 1 || hs[0].Endpoint != ep || !hs[0].Health || hs[0].Took == "" || hs[0].Error != "" {
			t.Errorf("endpoint health -w json = %s (%v)", out, err)
		}
		// --cluster checks every client URL of the member list.
		members, err := c.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out = ok(t, ep, "", "endpoint", "health", "--cluster", "-w", "table")
		for _, m := range members.Members {
			for _, u := range m.ClientURLs {
				if !strings.Contains(out, "│ "+u+" │   true │") {
					t.Errorf("endpoint health --cluster -w table: no healthy row for %s in\n%s", u, out)
				}
			}
		}
		out = ok(t, ep, "", "endpoint", "status", "--cluster")
		if n := strings.Count(out, "\n"); n != len(members.Members) || !strings.HasPrefix(out, members.Members[0].ClientURLs[0]+", ") {
			t.Errorf("endpoint status --cluster = %q, want a line per member", out)
		}
	})

	t.Run("alarm list", func(t *testing.T) {
		// No alarm is active: nothing in the simple format, a header alone
		// in JSON.
		wantOut(t, ep, "", "", "alarm", "list")
		out := ok(t, ep, "", "alarm", "list", "-w", "json")
		if !strings.HasPrefix(out, `{"header":{"cluster_id":`) || strings.Contains(out, "alarms") {
			t.Errorf("alarm list -w json = %s", out)
		}
		wantOut(t, ep, "", "", "alarm", "disarm") // nothing to disarm
		wantFail(t, ep, exitBadArgs, "Error: alarm list command accepts no arguments", "alarm", "list", "x")
		wantFail(t, ep, exitBadFeature, "Error: table not supported as output format", "alarm", "list", "-w", "table")
	})

	t.Run("member list", func(t *testing.T) {
		resp, err := c.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, m := range resp.Members {
			lines = append(lines, fmt.Sprintf("%x, started, %s, %s, %s, false\n", m.ID, m.Name,
				strings.Join(m.PeerURLs, ","), strings.Join(m.ClientURLs, ",")))
		}
		wantOut(t, ep, "", strings.Join(lines, ""), "member", "list")
		wantOut(t, ep, "", strings.Join(lines, ""), "member", "list", "--consistency", "s")
		if os.Getenv(endpointEnv) == "" {
			// The member testmember started: one, named default, its
			// client URL the endpoint.
			m := resp.Members
			if len(m) != 1 || m[0].Name != "default" || len(m[0].ClientURLs) != 1 || m[0].ClientURLs[0] != "http://"+ep || len(m[0].PeerURLs) != 1 {
				t.Errorf("member list of a single member = %v", m)
			}
		}
		out := ok(t, ep, "", "member", "list", "-w", "table")
		if !strings.Contains(out, " ID ") || !strings.Contains(out, "│ STATUS  │") || !strings.Contains(out, fmt.Sprintf("│ %x │ started │", resp.Members[0].ID)) {
			t.Errorf("member list -w table =\n%s", out)
		}
		var hexJSON struct {
			Members []struct {
				ID         string   `json:"ID"`
				Name       string   `json:"name"`
				ClientURLs []string `json:"clientURLs"`
			} `json:"members"`
		}
		out = ok(t, ep, "", "member", "list", "-w", "json", "--hex")
		if err := json.Unmarshal([]byte(out), &hexJSON); err != nil || len(hexJSON.Members) != len(resp.Members) ||
			hexJSON.Members[0].ID != fmt.Sprintf("%x", resp.Members[0].ID) || hexJSON.Members[0].Name != resp.Members[0].Name {
			t.Errorf("member list -w json --hex = %s (%v)", out, err)
		}
		out = ok(t, ep, "", "member", "list", "-w", "fields")
		if !strings.Contains(out, fmt.Sprintf("\"ID\" : %d\n\"Name\" : %q\n", resp.Members[0].ID, resp.Members[0].Name)) {
			t.Errorf("member list -w fields =\n%s", out)
		}
		wantFail(t, ep, exitBadFeature, `Error: unknown consistency flag "x"`, "member", "list", "--consistency", "x")
		wantFail(t, ep, exitBadArgs, "Error: member peer urls not provided", "member", "add", "m2")
		wantFail(t, ep, exitBadArgs, "Error: too many arguments, did you mean --peer-urls=http://127.0.0.1:1", "member", "add", "m2", "http://127.0.0.1:1")
		wantFail(t, ep, exitBadArgs, "Error: bad member ID arg", "member", "remove", "xyz")
		wantFail(t, ep, exitBadArgs, "Error: member ID is not provided", "member", "promote")
		wantFail(t, ep, exitBadFeature, "Error: fields not supported as output format", "member", "remove", "-w", "fields", "1")
	})

	t.Run("usage errors", func(t *testing.T) {
		wantFail(t, ep, exitBadArgs, "Error: get command needs one argument", "get")
		wantFail(t, ep, exitBadArgs, "Error: put command needs 1 argument and input from stdin or 2 arguments", "put")
		wantFail(t, ep, exitBadArgs, "Error: del command needs one argument", "del")
		wantFail(t, ep, exitBadArgs, "Error: compaction command needs 1 argument", "compaction")
		wantFail(t, ep, exitBadArgs, "cannot be set at the same time", "get", "--prefix", "--from-key", p)
		wantFail(t, ep, exitBadArgs, "print-value-only is only for `--write-out=simple`", "get", "--print-value-only", "-w", "json", p)
		wantFail(t, ep, exitBadFeature, "Error: bad sort target", "get", "--sort-by", "SIZE", p)
		wantFail(t, ep, exitBadFeature, "Error: unsupported output format", "get", "-w", "yaml", p)
		wantFail(t, ep, exitBadFeature, "Error: table not supported as output format", "put", "-w", "table", p+"t", "v")
		wantFail(t, ep, exitError, `Error: unknown command "nope"`, "nope")
		wantFail(t, ep, exitError, "Error: unknown flag: --nope", "get", "--nope", p)
	})

	t.Run("version", func(t *testing.T) {
		out := ok(t, ep, "", "version")
		if !strings.HasPrefix(out, "plinthctl version: ") || !strings.HasSuffix(out, "\nAPI version: 3.7\n") {
			t.Errorf("version = %q", out)
		}
	})

	t.Run("unreachable endpoint", func(t *testing.T) {
		down := testmember.FreeAddr(t)
		r := ctl(t, down, "", "--command-timeout", "300ms", "get", "k")
		if r.code != exitError || r.err != "Error: context deadline exceeded\n" {
			t.Errorf("get from a closed port: exit %d, stderr %q", r.code, r.err)
		}
		r = ctl(t, down, "", "--command-timeout", "300ms", "endpoint", "status", "-w", "table")
		if r.code != exitError || r.err != "Failed to get the status of endpoint "+down+" (context deadline exceeded)\n" {
			t.Errorf("endpoint status of a closed port: exit %d, stderr %q", r.code, r.err)
		}
		// The healthy endpoint on stdout, the other on stderr, exit 1.
		// (The timeout leaves room for the first linearizable read of the
		// live endpoint on a loaded machine.)
		r = ctl(t, ep+","+down, "", "--command-timeout", "2s", "endpoint", "health")
		wantErr := down + " is unhealthy: failed to commit proposal: context deadline exceeded\nError: unhealthy cluster\n"
		if r.code != exitError || r.err != wantErr || !strings.HasPrefix(r.out, ep+" is healthy: ") {
			t.Errorf("endpoint health with a closed port: exit %d, stdout %q, stderr %q; want stderr %q", r.code, r.out, r.err, wantErr)
		}
	})

	// The binary, through main: exit codes reach the shell.
	t.Run("binary", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "plinthctl")
		build := exec.Command("go", "build", "-o", bin, "github.com/plinthdb/plinth/cmd/plinthctl")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build cmd/plinthctl: %v\n%s", err, out)
		}
		cmd := exec.Command(bin, "--endpoints", ep, "put", p+"bin")
		cmd.Stdin = strings.NewReader("piped")
		if out, err := cmd.CombinedOutput(); err != nil || string(out) != "OK\n" {
			t.Fatalf("plinthctl put (stdin): %v %q", err, out)
		}
		if out, err := exec.Command(bin, "--endpoints", ep, "get", p+"bin").CombinedOutput(); err != nil || string(out) != p+"bin\npiped\n" {
			t.Errorf("plinthctl get: %v %q", err, out)
		}
		var ee *exec.ExitError
		out, err := exec.Command(bin, "--endpoints", ep, "get").CombinedOutput()
		if !errors.As(err, &ee) || ee.ExitCode() != exitBadArgs {
			t.Errorf("plinthctl get (no key): %v %q, want exit %d", err, out, exitBadArgs)
		}
		out, err = exec.Command(bin, "--endpoints", ep, "get", p+"bin", "--rev", "1000000000000").CombinedOutput()
		if !errors.As(err, &ee) || ee.ExitCode() != exitError || string(out) != "Error: etcdserver: mvcc: required revision is a future revision\n" {
			t.Errorf("plinthctl get --rev (future): %v %q, want exit %d", err, out, exitError)
		}
	})

	if _, err := c.Delete(ctx, p, clientv3.WithPrefix()); err != nil {
		t.Errorf("clean up %s: %v", p, err)
	}
}
