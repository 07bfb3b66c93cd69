package compat

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestEtcdctlMembership runs the same etcdctl member commands against a
// 3-member etcd v3.7.3 and a 3-member plinth, each through a follower, and
// requires the same answers: members added, updated, removed; and the
// refusals, in etcd's order of checks (a taken peer URL, too many learners, a
// learner not in sync, not enough started members, a cluster that would be
// left without an active quorum).
func TestEtcdctlMembership(t *testing.T) {
	ctl := buildEtcdctl(t)
	ref := startCluster(t, "etcd", "")
	tgt := startCluster(t, "plinth", targetBin)

	// etcd adds a member only once its peers have been connected for its
	// health interval (5s), plinth once its leader has heard from them;
	// until then they answer "unhealthy cluster". The members added never
	// start: their peer URLs are on 127.0.0.2, ports of one width, so that
	// no URL is a prefix of another.
	addFirst := func(s *server) string {
		deadline := time.Now().Add(30 * time.Second)
		for {
			out := runMemberCmd(t, ctl, s, []string{"member", "add", "l1", "--peer-urls=http://127.0.0.2:1001", "--learner"})
			if !strings.Contains(out, "unhealthy cluster") || time.Now().After(deadline) {
				return out
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	refFirst, tgtFirst := addFirst(ref), addFirst(tgt)

	steps := [][]string{
		// An overlapping set of peer URLs: another member ID than l1's.
		{"member", "add", "l1b", "--peer-urls=http://127.0.0.2:1001,http://127.0.0.2:1011"},
		{"member", "add", "l2", "--peer-urls=http://127.0.0.2:1002", "--learner"},
		{"member", "promote", "LEARNER"},
		{"member", "update", "LEARNER", "--peer-urls=http://127.0.0.2:1003"},
		{"member", "remove", "LEARNER"},
		{"member", "remove", "LEARNER"},
		{"member", "promote", "FOLLOWER"},
		{"member", "update", "ffff", "--peer-urls=http://127.0.0.2:1005"},
		{"member", "remove", "ffff"},
		// Two voters that never start: five voters, three started.
		{"member", "add", "v1", "--peer-urls=http://127.0.0.2:1006"},
		{"member", "add", "v2", "--peer-urls=http://127.0.0.2:1007"},
		{"member", "add", "v3", "--peer-urls=http://127.0.0.2:1008"},
		{"member", "add", "v4", "--peer-urls=http://127.0.0.2:1006,http://127.0.0.2:1009"},
		{"member", "add", "l3", "--peer-urls=http://127.0.0.2:1010", "--learner"},
		{"member", "remove", "VOTER-v1"},
		{"member", "remove", "VOTER-v2"},
		{"member", "add", "l3", "--peer-urls=http://127.0.0.2:1010", "--learner"},
	}
	transcript := func(s *server, first string) string {
		out := []string{first}
		vars := map[string]string{"LEARNER": memberWithPeerURL(t, s, "http://127.0.0.2:1001"), "FOLLOWER": fmt.Sprintf("%x", s.memberID)}
		for _, args := range steps {
			args = slices.Clone(args)
			for i, a := range args {
				if v, ok := vars[a]; ok {
					args[i] = v
				}
			}
			out = append(out, runMemberCmd(t, ctl, s, args))
			if args[1] == "add" && strings.HasPrefix(args[2], "v") {
				vars["VOTER-"+args[2]] = memberWithPeerURL(t, s, strings.TrimPrefix(args[3], "--peer-urls="))
			}
		}
		return normaliseMemberIDs(strings.Join(out, ""))
	}
	want, got := transcript(ref, refFirst), transcript(tgt, tgtFirst)
	if want != got {
		t.Errorf("etcdctl member commands answer differently:\netcd:\n%s\n%s:\n%s", want, tgt.name, got)
	}
}

// memberWithPeerURL is the hex ID of the member of s whose first peer URL is
// peerURL, or "none".
func memberWithPeerURL(t *testing.T, s *server, peerURL string) string {
	t.Helper()
	for _, m := range memberList(t, s).Members {
		if len(m.PeerURLs) > 0 && m.PeerURLs[0] == peerURL {
			return fmt.Sprintf("%x", m.ID)
		}
	}
	return "none"
}

// runMemberCmd runs one etcdctl command against s, and returns it with its
// output, where the names of the cluster's first members, their peer URLs
// and the lines of an env list are made alike for etcd and plinth.
func runMemberCmd(t *testing.T, ctl string, s *server, args []string) string {
	t.Helper()
	out := runEtcdctl(t, ctl, s, args)
	// The client's retry warning: its time and local port differ, its
	// error (with the gRPC code) must not.
	out = clientWarningRE.ReplaceAllString(out, "client warning: $1")
	out = memberNameRE.ReplaceAllString(out, "M-$1")
	// ETCD_INITIAL_CLUSTER lists the members by ID, which differ: sort it.
	out = initialClusterRE.ReplaceAllStringFunc(out, func(line string) string {
		m := initialClusterRE.FindStringSubmatch(line)
		entries := strings.Split(m[1], ",")
		slices.Sort(entries)
		return `ETCD_INITIAL_CLUSTER="` + strings.Join(entries, ",") + `"`
	})
	return "$ etcdctl " + strings.Join(args, " ") + "\n" + out
}

var (
	clientWarningRE  = regexp.MustCompile(`\{"level":"warn".*"error":"([^"]*)"\}`)
	memberNameRE     = regexp.MustCompile(`\b(?:etcd|plinth)-([0-9])\b`)
	initialClusterRE = regexp.MustCompile(`ETCD_INITIAL_CLUSTER="([^"]*)"`)
	hexIDRE          = regexp.MustCompile(`\b[0-9a-f]{8,16}\b`)
)

// normaliseMemberIDs names each hex ID in the transcript by the order it
// first appears in: member IDs differ between any two clusters, and some of
// these (members added, then removed) are in no member list to replace them
// from.
func normaliseMemberIDs(s string) string {
	names := map[string]string{}
	return hexIDRE.ReplaceAllStringFunc(s, func(id string) string {
		if !strings.ContainsAny(id, "abcdef") && len(id) < 12 {
			return id // a number
		}
		n, ok := names[id]
		if !ok {
			n = fmt.Sprintf("ID-%d", len(names)+1)
			names[id] = n
		}
		return n
	})
}
