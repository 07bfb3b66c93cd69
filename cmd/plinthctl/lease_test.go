package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// TestLeaseCommands runs the lease commands against a real server and checks
// etcdctl's output in the simple, json and fields formats.
func TestLeaseCommands(t *testing.T) {
	ep := testServer(t)
	granted := ok(t, ep, "", "lease", "grant", "100")
	m := regexp.MustCompile(`^lease ([0-9a-f]{16}) granted with TTL\(100s\)\n$`).FindStringSubmatch(granted)
	if m == nil {
		t.Fatalf("lease grant printed %q", granted)
	}
	id := m[1]
	prefix := fmt.Sprintf("lease-test-%s/", id)
	ok(t, ep, "", "put", prefix+"b", "v", "--lease", id)
	ok(t, ep, "", "put", prefix+"a", "v", "--lease", id)

	ttl := ok(t, ep, "", "lease", "timetolive", id, "--keys")
	want := regexp.MustCompile(`^lease ` + id + ` granted with TTL\(100s\), remaining\((9[0-9]|100)s\), attached keys\(\[` + prefix + `a ` + prefix + `b\]\)\n$`)
	if !want.MatchString(ttl) {
		t.Errorf("lease timetolive --keys printed %q", ttl)
	}
	if ttl := ok(t, ep, "", "lease", "timetolive", id); strings.Contains(ttl, "attached keys") {
		t.Errorf("lease timetolive without --keys printed %q", ttl)
	}
	if list := ok(t, ep, "", "lease", "list"); !strings.HasPrefix(list, "found ") || !strings.Contains(list, "\n"+id+"\n") {
		t.Errorf("lease list printed %q, without %s", list, id)
	}
	wantOut(t, ep, "", "lease "+id+" keepalived with TTL(100)\n", "lease", "keep-alive", "--once", id)

	var grant struct {
		ID  int64 `json:"ID"`
		TTL int64 `json:"TTL"`
	}
	out := ok(t, ep, "", "-w", "json", "lease", "grant", "7")
	if err := json.Unmarshal([]byte(out), &grant); err != nil || grant.ID == 0 || grant.TTL != 7 {
		t.Errorf("lease grant -w json printed %q (%v)", out, err)
	}
	fields := ok(t, ep, "", "-w", "fields", "--hex", "lease", "timetolive", fmt.Sprintf("%016x", grant.ID))
	for _, line := range []string{fmt.Sprintf(`"ID" : %016x`, grant.ID), `"GrantedTTL" : 7`, `"RaftTerm" : `} {
		if !strings.Contains(fields, line) {
			t.Errorf("lease timetolive -w fields printed %q, without %q", fields, line)
		}
	}

	wantOut(t, ep, "", "lease "+id+" revoked\n", "lease", "revoke", id)
	wantOut(t, ep, "", "lease "+id+" already expired\n", "lease", "timetolive", id)
	if got := ok(t, ep, "", "get", prefix, "--prefix", "--count-only", "-w", "fields"); !strings.Contains(got, `"Count" : 0`) {
		t.Errorf("keys of the revoked lease remain: %q", got)
	}
	wantFail(t, ep, exitError, "failed to revoke lease (etcdserver: requested lease not found)", "lease", "revoke", id)
	wantFail(t, ep, exitBadArgs, "expecting ID in Hex", "lease", "revoke", "xyz")
	wantFail(t, ep, exitBadArgs, "lease grant command needs TTL argument", "lease", "grant")
	wantFail(t, ep, exitError, "failed to grant lease (etcdserver: too large lease TTL)", "lease", "grant", "9000000001")
	wantOut(t, ep, "", "lease "+id+" expired or revoked.\n", "lease", "keep-alive", id)
}
