package compat

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// etcdHistory is what the reference etcd was made to hold before its
// snapshot was saved.
type etcdHistory struct {
	rev, compacted int64
	leases         []clientv3.LeaseID
	snapshot       string // the file, as etcdctl snapshot save writes it
}

// makeEtcdHistory writes a history into the reference etcd: puts,
// deletes, transactions (one deletes a key and puts another, one puts a key
// and deletes from it to the end of the key space), leases with keys
// attached, one revoked with its keys, a compaction at a deletion's
// revision, and writes after it;
// then it saves a snapshot through Maintenance.Snapshot, as etcdctl snapshot
// save does, checksum included.
func makeEtcdHistory(t *testing.T, ctx context.Context, cli *clientv3.Client, dir string) etcdHistory {
	t.Helper()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	grant := func(ttl int64) clientv3.LeaseID {
		t.Helper()
		l, err := cli.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return l.ID
	}
	long, short, revoked, empty := grant(3000), grant(600), grant(900), grant(1200)
	for i := range 60 {
		var opts []clientv3.OpOption
		switch i % 6 {
		case 1:
			opts = append(opts, clientv3.WithLease(long))
		case 2:
			opts = append(opts, clientv3.WithLease(revoked))
		}
		must(cli.Put(ctx, fmt.Sprintf("key/%02d", i%20), fmt.Sprint(i), opts...))
	}
	must(cli.Delete(ctx, "key/1", clientv3.WithPrefix()))
	must(cli.Txn(ctx).Then(clientv3.OpDelete("key/03"), clientv3.OpPut("txn/a", "1", clientv3.WithLease(short))).Commit())
	must(cli.Txn(ctx).Then(clientv3.OpPut("zz/doomed", "x"), clientv3.OpDelete("zz/", clientv3.WithFromKey())).Commit())
	must(cli.Put(ctx, "zz/keep", "x"))
	must(cli.Revoke(ctx, revoked))
	// Enough data for a bbolt file of many pages, nearly all compacted away.
	value := strings.Repeat("v", 300)
	for i := range 1500 {
		must(cli.Put(ctx, fmt.Sprintf("bulk/%04d", i%500), fmt.Sprint(value, i)))
	}
	must(cli.Put(ctx, "compact/at", ""))
	// The compaction revision is a deletion's: etcd 3.6+ keeps its
	// tombstone, so reads, watches and HashKV at that revision see it.
	mid, err := cli.Delete(ctx, "key/07")
	if err != nil {
		t.Fatal(err)
	}
	compacted := mid.Header.Revision
	must(cli.Compact(ctx, compacted, clientv3.WithCompactPhysical()))
	for i := range 30 {
		var opts []clientv3.OpOption
		if i%3 == 0 {
			opts = append(opts, clientv3.WithLease(short))
		}
		must(cli.Put(ctx, fmt.Sprintf("key/%02d", i%7), fmt.Sprint("after-", i), opts...))
	}
	must(cli.Put(ctx, "key/05", "no lease now")) // detached from its lease
	must(cli.Delete(ctx, "key/06"))
	last, err := cli.Put(ctx, "last", "")
	if err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(dir, "etcd.snapshot")
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(f, rc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if n%512 != 32 {
		t.Fatalf("etcd's snapshot is %d bytes, not 512k+32: no checksum", n)
	}
	return etcdHistory{rev: last.Header.Revision, compacted: compacted, leases: []clientv3.LeaseID{long, short, empty}, snapshot: path}
}

var (
	plinthctlOnce sync.Once
	plinthctlBin  string
	plinthctlErr  error
)

// buildPlinthctl builds ./cmd/plinthctl of the enclosing repository into
// toolsDir, once.
func buildPlinthctl(t *testing.T) string {
	t.Helper()
	plinthctlOnce.Do(func() {
		plinthctlBin, plinthctlErr = buildCommand(toolsDir, "plinthctl")
	})
	if plinthctlErr != nil {
		t.Fatal(plinthctlErr)
	}
	return plinthctlBin
}

// restoreFlags are the flags of `snapshot restore` and of the restored
// member's start that must agree.
func restoreFlags(m *member, dataDir, initial, token string) []string {
	return []string{"--data-dir", dataDir, "--name", m.name, "--initial-cluster", initial,
		"--initial-advertise-peer-urls", m.peer.String(), "--initial-cluster-token", token}
}

// restoredCluster restores the snapshot into n new plinth members with
// plinthctl and starts them; it returns them once they agree on a leader.
func restoredCluster(t *testing.T, ctl, snapshot string, n int) []*member {
	t.Helper()
	token := "migrated"
	members := make([]*member, n)
	var initial []string
	for i := range members {
		members[i] = &member{name: fmt.Sprintf("migrated-%d", i), client: freeURL(t), peer: freeURL(t)}
		initial = append(initial, members[i].name+"="+members[i].peer.String())
	}
	for _, m := range members {
		dir := t.TempDir()
		data := filepath.Join(dir, "data")
		flags := restoreFlags(m, data, strings.Join(initial, ","), token)
		out, err := exec.Command(ctl, append([]string{"snapshot", "restore", snapshot}, flags...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("plinthctl snapshot restore: %v\n%s", err, out)
		}
		t.Logf("%s", out)
		checkEtcdHash(t, string(out))
		m.proc = newProcess(t, m.name, targetBin, dir, append(flags,
			"--listen-client-urls", m.client.String(),
			"--advertise-client-urls", m.client.String(),
			"--listen-peer-urls", m.peer.String(),
			"--initial-cluster-state", "new",
			"--heartbeat-interval", fmt.Sprint(clusterHeartbeatMs),
			"--election-timeout", fmt.Sprint(clusterElectionMs),
		)...)
		m.start, m.stop = m.proc.start, m.proc.stop
	}
	for _, m := range members {
		m.start(t)
	}
	waitCluster(t, members)
	return members
}

// etcdHashOf is the reference etcd's HashKV at the snapshot's revision,
// which the restore must report: set by the test before restoring.
var etcdHashOf func(rev int64) uint32

// checkEtcdHash requires plinthctl's report of etcd's HashKV of the file to
// be what the reference etcd answers: the file was read whole, and as etcd
// reads it.
func checkEtcdHash(t *testing.T, out string) {
	t.Helper()
	const prefix = "etcd's HashKV of the snapshot at revision "
	i := strings.Index(out, prefix)
	if i < 0 {
		t.Fatalf("the restore reported no HashKV of etcd's:\n%s", out)
	}
	var rev int64
	var hash uint32
	if _, err := fmt.Sscanf(out[i+len(prefix):], "%d: %d", &rev, &hash); err != nil {
		t.Fatalf("reading the reported HashKV: %v\n%s", err, out)
	}
	if want := etcdHashOf(rev); hash != want {
		t.Errorf("the restore reports etcd's HashKV at %d as %d; etcd answers %d", rev, hash, want)
	}
}

// TestRestoreFromEtcdSnapshot migrates from the reference etcd in one
// command: a snapshot of an etcd that has a compacted history and leases is
// restored with plinthctl snapshot restore into a new plinth member, which
// must then answer as etcd does: every key at the current revision and at
// every revision from the compaction on, ErrCompacted below it, the same
// events to a watch from the compaction revision, the same leases with their
// TTLs and keys, and writes that continue etcd's revisions and versions. A
// truncated or damaged snapshot is refused and leaves no data dir. The same
// file restored into three members makes a cluster that answers alike.
func TestRestoreFromEtcdSnapshot(t *testing.T) {
	if selftest {
		t.Skip("restores into plinth; there is no etcd target for it")
	}
	ctl := buildPlinthctl(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ref := startEmbedded(t, "etcd")
	etcd := newClient(t, ref.addr)
	h := makeEtcdHistory(t, ctx, etcd, t.TempDir())
	etcdHashOf = func(rev int64) uint32 {
		resp, err := etcd.HashKV(ctx, ref.addr, rev)
		if err != nil {
			t.Fatalf("etcd's HashKV at %d: %v", rev, err)
		}
		return resp.Hash
	}

	t.Run("damaged", func(t *testing.T) {
		data, err := os.ReadFile(h.snapshot)
		if err != nil {
			t.Fatal(err)
		}
		flipped := slices.Clone(data)
		flipped[len(flipped)/2] ^= 0x40
		for _, c := range []struct {
			name, want string
			data       []byte
		}{
			{"truncated", "cut short", data[:len(data)-4096]},
			{"flipped byte", "SHA-256 mismatch", flipped},
			{"trailer cut", "cut short", data[:len(data)-32]},
		} {
			dir := t.TempDir()
			file := filepath.Join(dir, "snap")
			if err := os.WriteFile(file, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			dataDir := filepath.Join(dir, "data")
			out, err := exec.Command(ctl, "snapshot", "restore", file, "--data-dir", dataDir).CombinedOutput()
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Errorf("%s: restore gave %v: %s; want a failure saying %q", c.name, err, out, c.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("%s: a refused restore left files behind: %v", c.name, entries)
			}
		}
	})

	members := restoredCluster(t, ctl, h.snapshot, 1)
	plinth := client(t, members[0])
	defer plinth.Close()
	compareStores(t, ctx, etcd, plinth, h)
	compareWatch(t, ctx, etcd, plinth, h)
	compareLeases(t, ctx, etcd, plinth, h)
	hk, err := plinth.HashKV(ctx, members[0].client.Host, 0)
	if err != nil {
		t.Fatal(err)
	}
	if hk.Header.Revision != h.rev || hk.CompactRevision != h.compacted {
		t.Errorf("HashKV: revision %d, compact revision %d; want %d, %d", hk.Header.Revision, hk.CompactRevision, h.rev, h.compacted)
	}

	// Writes continue etcd's revisions and versions.
	before, err := etcd.Get(ctx, "key/00")
	if err != nil {
		t.Fatal(err)
	}
	put, err := plinth.Put(ctx, "key/00", "after migration")
	if err != nil {
		t.Fatal(err)
	}
	after, err := plinth.Get(ctx, "key/00")
	if err != nil {
		t.Fatal(err)
	}
	if put.Header.Revision != h.rev+1 || after.Kvs[0].Version != before.Kvs[0].Version+1 || after.Kvs[0].CreateRevision != before.Kvs[0].CreateRevision {
		t.Errorf("put after restore: revision %d, %v; want revision %d continuing %v", put.Header.Revision, after.Kvs[0], h.rev+1, before.Kvs[0])
	}
	// A migrated lease's revoke deletes the keys etcd attached to it.
	if _, err := plinth.Revoke(ctx, h.leases[0]); err != nil {
		t.Fatal(err)
	}
	all, err := plinth.Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range all.Kvs {
		if clientv3.LeaseID(kv.Lease) == h.leases[0] {
			t.Errorf("key %q kept revoked lease %x", kv.Key, kv.Lease)
		}
	}

	t.Run("three members", func(t *testing.T) {
		members := restoredCluster(t, ctl, h.snapshot, 3)
		for _, m := range members {
			cli := client(t, m)
			compareStores(t, ctx, etcd, cli, h)
			cli.Close()
		}
	})
}

func newClient(t *testing.T, addr string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{addr},
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(fastReconnect)},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// compareStores requires plinth to hold etcd's keys at every revision from
// the compaction on, and to refuse revisions below it as etcd does.
func compareStores(t *testing.T, ctx context.Context, etcd, plinth *clientv3.Client, h etcdHistory) {
	t.Helper()
	for rev := h.compacted; rev <= h.rev; rev++ {
		want, err := etcd.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev))
		if err != nil {
			t.Fatal(err)
		}
		got, err := plinth.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev), clientv3.WithSerializable())
		if err != nil {
			t.Fatalf("get at %d: %v", rev, err)
		}
		if got.Header.Revision != h.rev || got.Count != want.Count || !slices.EqualFunc(got.Kvs, want.Kvs, func(a, b *mvccpb.KeyValue) bool { return proto.Equal(a, b) }) {
			t.Fatalf("at revision %d plinth (header revision %d) holds\n%v\netcd (header revision %d) holds\n%v", rev, got.Header.Revision, got.Kvs, want.Header.Revision, want.Kvs)
		}
	}
	for _, cli := range []*clientv3.Client{etcd, plinth} {
		if _, err := cli.Get(ctx, "key/00", clientv3.WithRev(h.compacted-1), clientv3.WithSerializable()); err == nil || err.Error() != rpctypes.ErrCompacted.Error() {
			t.Errorf("get below the compaction revision: %v, want %v", err, rpctypes.ErrCompacted)
		}
	}
}

// compareWatch requires a watch from the compaction revision to deliver the
// same events from both.
func compareWatch(t *testing.T, ctx context.Context, etcd, plinth *clientv3.Client, h etcdHistory) {
	t.Helper()
	collect := func(cli *clientv3.Client) []*mvccpb.Event {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var evs []*mvccpb.Event
		for resp := range cli.Watch(wctx, "", clientv3.WithFromKey(), clientv3.WithRev(h.compacted), clientv3.WithPrevKV()) {
			if err := resp.Err(); err != nil {
				t.Fatalf("watch from %d: %v", h.compacted, err)
			}
			for _, ev := range resp.Events {
				evs = append(evs, (*mvccpb.Event)(ev))
				if ev.Kv.ModRevision == h.rev {
					return evs
				}
			}
		}
		t.Fatalf("watch from %d ended before revision %d", h.compacted, h.rev)
		return nil
	}
	want, got := collect(etcd), collect(plinth)
	if len(got) != len(want) {
		t.Fatalf("watch from %d: %d events, etcd gave %d", h.compacted, len(got), len(want))
	}
	for i := range got {
		if !proto.Equal(got[i], want[i]) {
			t.Fatalf("watch from %d: event %d is %v, etcd gave %v", h.compacted, i, got[i], want[i])
		}
	}
}

// compareLeases requires the same leases, granted TTLs and attached keys,
// and a remaining TTL etcd could report.
func compareLeases(t *testing.T, ctx context.Context, etcd, plinth *clientv3.Client, h etcdHistory) {
	t.Helper()
	ids := func(cli *clientv3.Client) []clientv3.LeaseID {
		resp, err := cli.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []clientv3.LeaseID
		for _, l := range resp.Leases {
			out = append(out, l.ID)
		}
		slices.Sort(out)
		return out
	}
	want := slices.Sorted(slices.Values(h.leases))
	if got, etcdIDs := ids(plinth), ids(etcd); !slices.Equal(got, want) || !slices.Equal(etcdIDs, want) {
		t.Fatalf("leases: plinth %x, etcd %x, want %x", got, etcdIDs, want)
	}
	for _, id := range want {
		w, err := etcd.TimeToLive(ctx, id, clientv3.WithAttachedKeys())
		if err != nil {
			t.Fatal(err)
		}
		g, err := plinth.TimeToLive(ctx, id, clientv3.WithAttachedKeys())
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(w.Keys, func(a, b []byte) int { return strings.Compare(string(a), string(b)) })
		slices.SortFunc(g.Keys, func(a, b []byte) int { return strings.Compare(string(a), string(b)) })
		if g.GrantedTTL != w.GrantedTTL || fmt.Sprintf("%q", g.Keys) != fmt.Sprintf("%q", w.Keys) {
			t.Errorf("lease %x: plinth grants %d s with keys %q; etcd %d s with %q", id, g.GrantedTTL, g.Keys, w.GrantedTTL, w.Keys)
		}
		// etcd had not checkpointed these leases: a restart starts them
		// at their full TTL, and so does the restore.
		if g.TTL > g.GrantedTTL || g.TTL < g.GrantedTTL-60 {
			t.Errorf("lease %x: %d s left of %d", id, g.TTL, g.GrantedTTL)
		}
	}
}
