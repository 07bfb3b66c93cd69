package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestParseFlagsAcceptsAnEtcdCommandLine(t *testing.T) {
	// A single-member etcd command line, as etcd's docs write it.
	args := strings.Fields(`--name infra0 --data-dir /tmp/infra0 --listen-client-urls http://127.0.0.1:2379
		--advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380
		--initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster infra0=http://127.0.0.1:2380
		--initial-cluster-state new --initial-cluster-token tkn --max-request-bytes=2097152 --log-level=warn
		--heartbeat-interval=50 --election-timeout=500 --snapshot-count=5000`)
	cfg, err := parseFlags(args, nil, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if cfg.Name != "infra0" || cfg.DataDir != "/tmp/infra0" || cfg.MaxRequestBytes != 2097152 ||
		cfg.InitialClusterToken != "tkn" || cfg.SnapshotCount != 5000 || cfg.ElectionTimeout.Milliseconds() != 500 {
		t.Fatalf("parsed config: %+v", cfg)
	}
	if got := cfg.ListenClientURLs[0].Host; got != "127.0.0.1:2379" {
		t.Fatalf("client URL host %q", got)
	}
}

// TestParseFlagsTakesEtcdOnlyFlags: flags of etcd's that change nothing in
// plinth are taken, so that an etcd command line starts plinth unchanged;
// a value plinth cannot honour is said on stderr, and TLS, which it cannot
// serve yet, stops it.
func TestParseFlagsTakesEtcdOnlyFlags(t *testing.T) {
	var stderr bytes.Buffer
	_, err := parseFlags(strings.Fields(`--name a --logger=zap --log-outputs=stderr --pre-vote --strict-reconfig-check=true
		--max-snapshots=5 --max-wals=5 --experimental-enable-lease-checkpoint --enable-grpc-gateway --client-cert-auth=false`), nil, &stderr)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if got := stderr.String(); got != "plinth: --enable-grpc-gateway=true has no effect: plinth serves gRPC only, no JSON gateway\n" {
		t.Fatalf("stderr %q", got)
	}
	for _, args := range []string{"--cert-file=/etc/etcd/server.crt", "--peer-client-cert-auth", "--auto-tls=true"} {
		_, err := parseFlags([]string{args}, nil, &stderr)
		if err == nil || !strings.Contains(err.Error(), "TLS is not supported yet") {
			t.Errorf("%s: %v, want a refusal naming TLS", args, err)
		}
	}
	if _, err := parseFlags([]string{"--logger=capnslog"}, nil, &stderr); err != nil {
		t.Errorf("--logger=capnslog: %v; want it taken with a note", err)
	}
}

// TestParseFlagsFromEtcdEnvironment: etcd reads every flag from an ETCD_
// variable too, and its runtime reconfiguration guide has the operator
// export what etcdctl member add prints. The command line wins.
func TestParseFlagsFromEtcdEnvironment(t *testing.T) {
	environ := []string{
		`ETCD_NAME=infra3`,
		`ETCD_INITIAL_CLUSTER=infra0=http://10.0.1.10:2380,infra3=http://10.0.1.13:2380`,
		`ETCD_INITIAL_CLUSTER_STATE=existing`,
		`ETCD_INITIAL_ADVERTISE_PEER_URLS=http://10.0.1.13:2380`,
		`ETCD_SNAPSHOT_COUNT=5000`,
		`ETCD_DATA_DIR=/from/env`,
		`ETCD_NO_SUCH_FLAG=1`,
		`ETCDCTL_API=3`,
		`PATH=/bin`,
	}
	var stderr bytes.Buffer
	cfg, err := parseFlags([]string{"--data-dir=/from/flag"}, environ, &stderr)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if cfg.Name != "infra3" || cfg.InitialClusterState != "existing" || len(cfg.InitialCluster) != 2 ||
		cfg.AdvertisePeerURLs[0].Host != "10.0.1.13:2380" || cfg.SnapshotCount != 5000 {
		t.Fatalf("parsed config: %+v", cfg)
	}
	if cfg.DataDir != "/from/flag" {
		t.Fatalf("data dir %q: the command line must win over ETCD_DATA_DIR", cfg.DataDir)
	}
	for _, want := range []string{"ignoring ETCD_DATA_DIR: the command line sets --data-dir", "ignoring ETCD_NO_SUCH_FLAG: no such flag"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q lacks %q", stderr.String(), want)
		}
	}
	if strings.Contains(stderr.String(), "ETCDCTL_API") {
		t.Errorf("stderr %q names ETCDCTL_API, which is etcdctl's", stderr.String())
	}
	if _, err := parseFlags(nil, []string{"ETCD_SNAPSHOT_COUNT=many"}, &stderr); err == nil || !strings.Contains(err.Error(), "ETCD_SNAPSHOT_COUNT") {
		t.Fatalf("a bad ETCD_SNAPSHOT_COUNT: %v, want an error naming it", err)
	}
}

// TestParseFlagsOperations: the maintenance flags of etcd, in both of their
// spellings where etcd has two.
func TestParseFlagsOperations(t *testing.T) {
	cfg, err := parseFlags(strings.Fields(`--quota-backend-bytes=1048576 --auto-compaction-mode=revision
		--auto-compaction-retention=1000 --feature-gates=InitialCorruptCheck=true,SomethingElse=false
		--experimental-corrupt-check-time=3m --experimental-compact-hash-check-enabled
		--experimental-compact-hash-check-time=2m`), nil, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if cfg.QuotaBackendBytes != 1<<20 || cfg.AutoCompaction.Revisions != 1000 || !cfg.CorruptCheck.Initial ||
		cfg.CorruptCheck.Period != 3*time.Minute || cfg.CorruptCheck.CompactPeriod != 2*time.Minute {
		t.Fatalf("parsed: quota %d, auto-compaction %+v, corrupt check %+v", cfg.QuotaBackendBytes, cfg.AutoCompaction, cfg.CorruptCheck)
	}
	cfg, err = parseFlags(strings.Fields(`--auto-compaction-retention=72h --corrupt-check-time=1m
		--feature-gates=CompactHashCheck=true`), nil, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if cfg.AutoCompaction.Period != 72*time.Hour || cfg.CorruptCheck.Initial || cfg.CorruptCheck.Period != time.Minute ||
		cfg.CorruptCheck.CompactPeriod != time.Minute {
		t.Fatalf("parsed: auto-compaction %+v, corrupt check %+v", cfg.AutoCompaction, cfg.CorruptCheck)
	}
}

func TestParseFlagsDefaults(t *testing.T) {
	cfg, err := parseFlags(nil, nil, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if cfg.DataDir != "plinth.data" || cfg.ListenClientURLs[0].Host != "127.0.0.1:2379" || cfg.MaxRequestBytes != 1572864 {
		t.Fatalf("defaults: data dir %q, client %q, max request %d", cfg.DataDir, cfg.ListenClientURLs[0].Host, cfg.MaxRequestBytes)
	}
	if _, ok := cfg.InitialCluster["default"]; !ok {
		t.Fatalf("default initial cluster %v lacks this member", cfg.InitialCluster)
	}
}

func TestParseFlagsRejectsBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{"malformed number", []string{"--max-request-bytes=lots"}, "invalid value"},
		{"malformed url", []string{"--listen-client-urls=127.0.0.1:2379"}, "--listen-client-urls"},
		{"url without port", []string{"--listen-client-urls=http://127.0.0.1"}, "want scheme://host:port"},
		{"stray argument", []string{"extra"}, "unexpected argument"},
		{"bad log level", []string{"--log-level=loud"}, "--log-level"},
		{"bad cluster state", []string{"--initial-cluster-state=maybe"}, "--initial-cluster-state"},
		{"member missing from cluster", []string{"--name=a", "--initial-cluster=b=http://127.0.0.1:2380"}, "no member named"},
		{"peer url mismatch", []string{"--initial-cluster=default=http://127.0.0.1:9999"}, "--initial-advertise-peer-urls"},
		{"peer url given twice", []string{"--initial-cluster=default=http://127.0.0.1:2380,b=http://127.0.0.1:2380"}, "to both"},
		{"election too short", []string{"--election-timeout=100"}, "--election-timeout"},
		{"tls", []string{"--listen-client-urls=https://127.0.0.1:2379"}, "TLS"},
		{"bad feature gate", []string{"--feature-gates=InitialCorruptCheck"}, "--feature-gates"},
		{"bad compaction mode", []string{"--auto-compaction-mode=weekly"}, "--auto-compaction-mode"},
		{"bad retention", []string{"--auto-compaction-retention=soon"}, "--auto-compaction-retention"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			_, err := parseFlags(tc.args, nil, &stderr)
			if err == nil {
				t.Fatalf("no error")
			}
			if msg := err.Error() + stderr.String(); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q does not mention %q", msg, tc.want)
			}
		})
	}
}

func TestRunExitsWithUsageErrorCode(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"--bogus"}, &stderr); code != 2 {
		t.Fatalf("exit code %d, want 2; stderr: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "plinth:") {
		t.Fatalf("stderr lacks a plinth: message: %s", stderr.String())
	}
}

func TestParseFlagsWatchProgressInterval(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 10 * time.Minute},
		{[]string{"--watch-progress-notify-interval=5s"}, 5 * time.Second},
		{[]string{"--experimental-watch-progress-notify-interval=7s"}, 7 * time.Second},
	} {
		cfg, err := parseFlags(tc.args, nil, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if cfg.WatchProgressNotifyInterval != tc.want {
			t.Fatalf("%v: interval %v, want %v", tc.args, cfg.WatchProgressNotifyInterval, tc.want)
		}
	}
}

// The read lease is on unless --read-lease=false (or ETCD_READ_LEASE=false)
// turns it off.
func TestParseFlagsReadLease(t *testing.T) {
	for _, tc := range []struct {
		args, env []string
		without   bool
	}{
		{nil, nil, false},
		{[]string{"--read-lease=false"}, nil, true},
		{nil, []string{"ETCD_READ_LEASE=false"}, true},
		{[]string{"--read-lease=true"}, []string{"ETCD_READ_LEASE=false"}, false},
	} {
		cfg, err := parseFlags(tc.args, tc.env, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("%v %v: %v", tc.args, tc.env, err)
		}
		if cfg.WithoutReadLease != tc.without {
			t.Fatalf("%v %v: without the read lease %v, want %v", tc.args, tc.env, cfg.WithoutReadLease, tc.without)
		}
	}
}

// TestPlinthSetsGCPercent: plinth governs the GC's percent unless GOGC has
// a value in the environment, where the runtime has already read it.
func TestPlinthSetsGCPercent(t *testing.T) {
	for _, tc := range []struct {
		environ []string
		want    bool
	}{
		{nil, true},
		{[]string{"HOME=/root", "GOGCX=1", "GOGC="}, true},
		{[]string{"HOME=/root", "GOGC=50"}, false},
		{[]string{"GOGC=off"}, false},
	} {
		if got := plinthSetsGCPercent(tc.environ); got != tc.want {
			t.Errorf("plinthSetsGCPercent(%q) = %v, want %v", tc.environ, got, tc.want)
		}
	}
}
