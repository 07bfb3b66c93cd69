package compat

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestEtcdctl runs the real etcdctl v3.7.3 (a tool of this module, see
// go.mod) against the reference etcd and against plinth, and requires the
// same output and exit code from both, once the ids, addresses and timings
// that must differ are replaced by names. These are the commands an operator
// (or a health probe) runs first on a new cluster.
func TestEtcdctl(t *testing.T) {
	ctl := buildEtcdctl(t)
	p := startPair(t, oneMember)
	for _, args := range [][]string{
		{"endpoint", "health"},
		{"endpoint", "health", "-w", "json"},
		{"endpoint", "health", "--cluster", "-w", "table"},
		{"alarm", "list"},
		{"alarm", "list", "-w", "json"},
		{"alarm", "disarm"},
		{"member", "list"},
		{"member", "list", "-w", "json"},
		{"member", "list", "-w", "table", "--consistency", "s"},
		{"member", "list", "-w", "fields", "--hex"},
		{"defrag"},
		{"auth", "status"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			ref := runEtcdctl(t, ctl, p.ref, args)
			tgt := runEtcdctl(t, ctl, p.tgt, args)
			if ref != tgt {
				t.Errorf("etcdctl %s:\netcd:\n%s\n%s:\n%s", strings.Join(args, " "), ref, p.tgt.name, tgt)
			}
			if !strings.HasSuffix(ref, "exit 0\n") {
				t.Errorf("etcdctl %s against etcd did not succeed:\n%s", strings.Join(args, " "), ref)
			}
		})
	}
}

// buildEtcdctl builds etcdctl v3.7.3, the version this module requires, into
// a temp dir.
func buildEtcdctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "etcdctl")
	out, err := exec.Command("go", "build", "-o", bin, "go.etcd.io/etcd/etcdctl/v3").CombinedOutput()
	if err != nil {
		t.Fatalf("compat: go build etcdctl: %v\n%s", err, out)
	}
	return bin
}

var tookRE = regexp.MustCompile(`[0-9.]+(ns|µs|ms|s)\b`)

// runEtcdctl runs etcdctl against s and returns its stdout, stderr and exit
// code in one text, with the server's ids and URLs replaced by names and
// durations by "T".
func runEtcdctl(t *testing.T, ctl string, s *server, args []string) string {
	t.Helper()
	cmd := exec.Command(ctl, append([]string{"--endpoints", s.addr, "--command-timeout", "10s"}, args...)...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := 0
	if err := cmd.Run(); err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("compat: run etcdctl: %v", err)
		}
		code = ee.ExitCode()
	}
	out := fmt.Sprintf("stdout:\n%sstderr:\n%sexit %d\n", stdout.String(), stderr.String(), code)

	ml := memberList(t, s)
	var pairs []string
	for _, m := range ml.Members {
		pairs = append(pairs, fmt.Sprintf("%x", m.ID), "MEMBER", fmt.Sprint(m.ID), "MEMBER")
		for _, u := range m.PeerURLs {
			pairs = append(pairs, u, "PEER-URL")
		}
	}
	h := ml.Header
	pairs = append(pairs,
		fmt.Sprintf("%x", h.ClusterId), "CLUSTER", fmt.Sprint(h.ClusterId), "CLUSTER",
		s.addr, "CLIENT-ADDR")
	out = strings.NewReplacer(pairs...).Replace(out)
	// Durations, and the table widths they set.
	out = tookRE.ReplaceAllString(out, "T")
	return regexp.MustCompile(`[─ ]+`).ReplaceAllString(out, " ")
}

// memberList asks s for its member list, through a client of its own.
func memberList(t *testing.T, s *server) *clientv3.MemberListResponse {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatalf("compat: member list of %s: %v", s.name, err)
	}
	return ml
}

// TestEtcdctlSnapshotSave runs etcdctl snapshot save against both servers:
// etcd's client refuses a stream that is not 512k+32 bytes long (a backend
// and its SHA-256), so plinth's backups must have that shape.
func TestEtcdctlSnapshotSave(t *testing.T) {
	ctl := buildEtcdctl(t)
	p := startPair(t, oneMember)
	for _, s := range []*server{p.ref, p.tgt} {
		file := filepath.Join(t.TempDir(), "backup.db")
		out, err := exec.Command(ctl, "--endpoints", s.addr, "snapshot", "save", file).CombinedOutput()
		if err != nil {
			t.Fatalf("etcdctl snapshot save against %s: %v\n%s", s.name, err, out)
		}
		if !strings.Contains(string(out), "Snapshot saved at "+file) {
			t.Errorf("etcdctl snapshot save against %s printed:\n%s", s.name, out)
		}
	}
}

// TestEtcdctlClusterHashKV runs etcdctl endpoint hashkv --cluster against a
// three-member plinth after writes, deletes and a compaction: every member
// answers, at the same revision, with the same hash.
func TestEtcdctlClusterHashKV(t *testing.T) {
	ctl := buildEtcdctl(t)
	p := startPair(t, threeMembers)
	ctx := context.Background()
	var last int64
	for i := range 50 {
		resp, err := p.tgt.kv.Put(ctx, &pb.PutRequest{Key: []byte(fmt.Sprintf("k%02d", i%20)), Value: []byte(fmt.Sprint(i))})
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Header.Revision
	}
	if _, err := p.tgt.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("k1"), RangeEnd: []byte("k2")}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.tgt.kv.Compact(ctx, &pb.CompactionRequest{Revision: last - 10, Physical: true}); err != nil {
		t.Fatal(err)
	}
	var answers []struct {
		Endpoint string `json:"Endpoint"`
		HashKV   struct {
			Hash            uint32 `json:"hash"`
			CompactRevision int64  `json:"compact_revision"`
			HashRevision    int64  `json:"hash_revision"`
		} `json:"HashKV"`
	}
	// The members apply the compaction one after another: ask until
	// they all report it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(ctl, "--endpoints", p.tgt.addr, "endpoint", "hashkv", "--cluster", "--rev", fmt.Sprint(last), "-w", "json").Output()
		if err != nil {
			t.Fatalf("etcdctl endpoint hashkv --cluster: %v\n%s", err, out)
		}
		if err := json.Unmarshal(out, &answers); err != nil {
			t.Fatalf("etcdctl endpoint hashkv -w json: %v in %s", err, out)
		}
		compacted := 0
		for _, a := range answers {
			if a.HashKV.CompactRevision == last-10 {
				compacted++
			}
		}
		if compacted == len(answers) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(answers) != 3 {
		t.Fatalf("%d members answered, want 3: %+v", len(answers), answers)
	}
	for _, a := range answers {
		if a.HashKV != answers[0].HashKV {
			t.Fatalf("members disagree: %+v", answers)
		}
	}
	if answers[0].HashKV.HashRevision != last || answers[0].HashKV.CompactRevision != last-10 {
		t.Fatalf("hashed revision %d with compaction %d, want %d and %d", answers[0].HashKV.HashRevision, answers[0].HashKV.CompactRevision, last, last-10)
	}
}

// TestEtcdctlDowngradeErrors runs etcdctl downgrade's checks against both
// servers: a malformed version and a target that is not one minor version
// below the cluster's get etcd's errors from plinth too, and a cancel with no
// downgrade in progress succeeds on both. (A valid target differs by design:
// etcd starts the downgrade, plinth refuses it, see internal/server's
// TestDowngradeRefused.)
func TestEtcdctlDowngradeErrors(t *testing.T) {
	ctl := buildEtcdctl(t)
	p := startPair(t, oneMember)
	for _, args := range [][]string{
		{"downgrade", "validate", "three"},
		{"downgrade", "enable", "3"},
		{"downgrade", "validate", "2.3"},
		{"downgrade", "enable", "3.4.1"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			ref, refCode := etcdctlError(t, ctl, p.ref, args)
			tgt, tgtCode := etcdctlError(t, ctl, p.tgt, args)
			if ref != tgt || refCode != tgtCode {
				t.Errorf("etcdctl %s: etcd %q (exit %d), %s %q (exit %d)", strings.Join(args, " "), ref, refCode, p.tgt.name, tgt, tgtCode)
			}
			if refCode == 0 {
				t.Errorf("etcdctl %s succeeded against etcd: the case tests nothing", strings.Join(args, " "))
			}
		})
	}
	// The answer names the cluster's version, which differs (etcd's 3.7,
	// plinth's 3.6).
	versionRE := regexp.MustCompile(`cluster version [0-9]+\.[0-9]+$`)
	for _, s := range []*server{p.ref, p.tgt} {
		out, err := exec.Command(ctl, "--endpoints", s.addr, "downgrade", "cancel").Output()
		if err != nil || !versionRE.MatchString(strings.TrimSpace(string(out))) || !strings.HasPrefix(string(out), "Downgrade cancel success") {
			t.Errorf("etcdctl downgrade cancel against %s: %v\n%s", s.name, err, out)
		}
	}
}

// etcdctlError runs etcdctl against s and returns the error line it printed
// (the client's retry warnings before it carry times and addresses) and its
// exit code.
func etcdctlError(t *testing.T, ctl string, s *server, args []string) (string, int) {
	t.Helper()
	cmd := exec.Command(ctl, append([]string{"--endpoints", s.addr, "--command-timeout", "10s"}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("compat: run etcdctl: %v", err)
		}
		code = ee.ExitCode()
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Error:") {
			return line, code
		}
	}
	return "", code
}
