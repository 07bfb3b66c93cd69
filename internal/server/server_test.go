package server

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// startServer runs a member in-process on a free loopback port, with its data
// in a temp dir, and returns a client connected to it.
func startServer(t *testing.T, dataDir string) (*Server, *clientv3.Client) {
	t.Helper()
	return startServerWith(t, dataDir, nil)
}

// startServerWith is startServer with the configuration changed by configure.
func startServerWith(t *testing.T, dataDir string, configure func(*Config)) (*Server, *clientv3.Client) {
	t.Helper()
	mustURL := func(s string) []url.URL {
		us, err := ParseURLs(s)
		if err != nil {
			t.Fatal(err)
		}
		return us
	}
	peer := mustURL("http://127.0.0.1:0")
	cfg := Config{
		Name:                "default",
		DataDir:             dataDir,
		ListenClientURLs:    mustURL("http://127.0.0.1:0"),
		AdvertiseClientURLs: mustURL("http://127.0.0.1:0"),
		ListenPeerURLs:      peer,
		AdvertisePeerURLs:   peer,
		InitialCluster:      map[string][]url.URL{"default": peer},
		InitialClusterState: "new",
		InitialClusterToken: "test",
		MaxRequestBytes:     1572864,
		HeartbeatInterval:   10 * time.Millisecond,
		ElectionTimeout:     100 * time.Millisecond,
		SnapshotCount:       100,
		Logger:              slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if configure != nil {
		configure(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("start server: %v", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.ClientAddrs(), DialTimeout: 5 * time.Second})
	if err != nil {
		srv.Stop()
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() {
		_ = cli.Close()
		srv.Stop()
	})
	return srv, cli
}

func TestPutGetThroughRaft(t *testing.T) {
	_, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	put, err := cli.Put(ctx, "k", "v1")
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	if put.Header.Revision != 2 {
		t.Fatalf("first put got revision %d, want 2 (etcd starts at 1)", put.Header.Revision)
	}
	if put.Header.ClusterId == 0 || put.Header.MemberId == 0 || put.Header.RaftTerm == 0 {
		t.Fatalf("header lacks identity or term: %+v", put.Header)
	}
	if _, err := cli.Put(ctx, "k", "v2"); err != nil {
		t.Fatalf("put: %v", err)
	}
	for _, opts := range [][]clientv3.OpOption{nil, {clientv3.WithSerializable()}} {
		get, err := cli.Get(ctx, "k", opts...)
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if len(get.Kvs) != 1 || string(get.Kvs[0].Value) != "v2" || get.Kvs[0].Version != 2 ||
			get.Kvs[0].CreateRevision != 2 || get.Kvs[0].ModRevision != 3 {
			t.Fatalf("get k: %+v", get.Kvs)
		}
	}
	old, err := cli.Get(ctx, "k", clientv3.WithRev(2))
	if err != nil || len(old.Kvs) != 1 || string(old.Kvs[0].Value) != "v1" {
		t.Fatalf("get k at rev 2: %+v, %v", old, err)
	}
	if _, err := cli.Get(ctx, "k", clientv3.WithRev(100)); err != rpctypes.ErrFutureRev {
		t.Fatalf("get at future revision: %v, want %v", err, rpctypes.ErrFutureRev)
	}
	if _, err := cli.Compact(ctx, 3, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	if _, err := cli.Get(ctx, "k", clientv3.WithRev(2)); err != rpctypes.ErrCompacted {
		t.Fatalf("get at compacted revision: %v, want %v", err, rpctypes.ErrCompacted)
	}
}

func TestBadRequestsGetEtcdErrors(t *testing.T) {
	_, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := make([]byte, 1572864+1)
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"empty key put", func() error { _, err := cli.Put(ctx, "", "v"); return err }, rpctypes.ErrEmptyKey},
		{"empty key get", func() error { _, err := cli.Get(ctx, ""); return err }, rpctypes.ErrEmptyKey},
		{"too large", func() error { _, err := cli.Put(ctx, "k", string(big)); return err }, rpctypes.ErrRequestTooLarge},
		{"ignore value of missing key", func() error { _, err := cli.Put(ctx, "missing", "", clientv3.WithIgnoreValue()); return err }, rpctypes.ErrKeyNotFound},
		{"unknown lease", func() error { _, err := cli.Put(ctx, "k", "v", clientv3.WithLease(7)); return err }, rpctypes.ErrLeaseNotFound},
		{"duplicate key in txn", func() error {
			_, err := cli.Txn(ctx).Then(clientv3.OpPut("a", "1"), clientv3.OpPut("a", "2")).Commit()
			return err
		}, rpctypes.ErrDuplicateKey},
		{"too many ops", func() error {
			ops := make([]clientv3.Op, 129)
			for i := range ops {
				ops[i] = clientv3.OpGet("k")
			}
			_, err := cli.Txn(ctx).Then(ops...).Commit()
			return err
		}, rpctypes.ErrTooManyOps},
		{"compact future", func() error { _, err := cli.Compact(ctx, 1000); return err }, rpctypes.ErrFutureRev},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.op(); err != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	srv, cli := startServer(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// More writes than the log keeps, so the restart replays from a truncated log.
	var last int64
	for i := 0; i < 500; i++ {
		resp, err := cli.Put(ctx, "key", string(rune('a'+i%26)))
		if err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
		last = resp.Header.Revision
	}
	_ = cli.Close()
	srv.Stop()

	_, cli2 := startServer(t, dir)
	get, err := cli2.Get(ctx, "key")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if get.Header.Revision != last || len(get.Kvs) != 1 || get.Kvs[0].Version != 500 || get.Kvs[0].ModRevision != last {
		t.Fatalf("after restart: header rev %d kvs %+v, want rev %d version 500", get.Header.Revision, get.Kvs, last)
	}
	put, err := cli2.Put(ctx, "key", "after")
	if err != nil || put.Header.Revision != last+1 {
		t.Fatalf("put after restart: %+v %v, want revision %d", put, err, last+1)
	}
}
