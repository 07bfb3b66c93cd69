package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/testmember"
)

// TestSnapshotSaveRestore saves a backup of a three-member cluster under
// write load, restores it into the data dirs of a new three-member cluster,
// and requires the new cluster to hold exactly the old one's keys, versions
// and history at the backup's revision, under a new cluster ID, and to take
// writes. The backup's hash equals the old cluster's HashKV at its revision.
func TestSnapshotSaveRestore(t *testing.T) {
	bin, err := testmember.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	old := testmember.NewCluster(t, bin, 3)
	if err := old.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cli, err := old.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for i := range 300 {
		if _, err := cli.Put(ctx, fmt.Sprintf("key/%03d", i%100), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Delete(ctx, "key/05", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	compacted, err := cli.Put(ctx, "compacted-at", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, compacted.Header.Revision-50); err != nil {
		t.Fatal(err)
	}

	// Writes go on while the backup is made.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	load.Add(1)
	go func() {
		defer load.Done()
		for i := 0; loadCtx.Err() == nil; i++ {
			_, _ = cli.Put(loadCtx, fmt.Sprintf("load/%03d", i%50), fmt.Sprint(i))
		}
	}()
	file := filepath.Join(t.TempDir(), "backup.db")
	out := ok(t, old.Members[1].Endpoint(), "", "snapshot", "save", file)
	stopLoad()
	load.Wait()
	if out != "Snapshot saved at "+file+"\nServer version 3.6.0\n" {
		t.Fatalf("snapshot save printed %q", out)
	}
	var st snapshotStatus
	if err := json.Unmarshal([]byte(ok(t, "", "", "snapshot", "status", file, "-w", "json")), &st); err != nil {
		t.Fatal(err)
	}
	rev := st.Revision
	if rev < compacted.Header.Revision || st.CompactRevision != compacted.Header.Revision-50 || st.TotalKey < 91 {
		t.Fatalf("snapshot status %+v: want revision >= %d, compact revision %d, >= 91 keys", st, compacted.Header.Revision, compacted.Header.Revision-50)
	}
	h, err := cli.HashKV(ctx, old.Members[0].Endpoint(), rev)
	if err != nil {
		t.Fatal(err)
	}
	if h.Hash != st.Hash {
		t.Fatalf("backup hash %x, the cluster's HashKV at revision %d %x", st.Hash, rev, h.Hash)
	}
	want, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev))
	if err != nil {
		t.Fatal(err)
	}
	wantOld, err := cli.Get(ctx, "key/", clientv3.WithPrefix(), clientv3.WithRev(compacted.Header.Revision-10))
	if err != nil {
		t.Fatal(err)
	}

	// A damaged file is refused, and leaves no data dir behind.
	damaged := filepath.Join(t.TempDir(), "damaged.db")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(damaged, b, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "data")
	wantFail(t, "", exitError, "SHA-256 mismatch", "snapshot", "restore", damaged, "--data-dir", dir)
	if err := os.WriteFile(damaged, b[:len(b)-1000], 0o600); err != nil {
		t.Fatal(err)
	}
	wantFail(t, "", exitError, "cut short", "snapshot", "restore", damaged, "--data-dir", dir)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("a refused restore left %s behind (%v)", dir, err)
	}

	// The new cluster: one restore per member, with its flags.
	restored := testmember.NewCluster(t, bin, 3)
	var initial []string
	for _, m := range restored.Members {
		initial = append(initial, m.Name()+"="+m.PeerURL())
	}
	for _, m := range restored.Members {
		ok(t, "", "", "snapshot", "restore", file, "--data-dir", m.DataDir(), "--name", m.Name(),
			"--initial-cluster", strings.Join(initial, ","), "--initial-advertise-peer-urls", m.PeerURL(),
			"--initial-cluster-token", restored.Token())
	}
	wantFail(t, "", exitError, "exists", "snapshot", "restore", file, "--data-dir", restored.Members[0].DataDir(), "--name", restored.Members[0].Name(),
		"--initial-cluster", strings.Join(initial, ","), "--initial-advertise-peer-urls", restored.Members[0].PeerURL(),
		"--initial-cluster-token", restored.Token())
	if err := restored.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i, m := range restored.Members {
		mcli, err := m.Client()
		if err != nil {
			t.Fatal(err)
		}
		defer mcli.Close()
		got, err := mcli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithSerializable())
		if err != nil {
			t.Fatal(err)
		}
		if got.Header.Revision != rev || got.Header.ClusterId == want.Header.ClusterId {
			t.Fatalf("restored member %d: revision %d cluster %x; want revision %d and a cluster ID other than %x", i, got.Header.Revision, got.Header.ClusterId, rev, want.Header.ClusterId)
		}
		equalKVs(t, fmt.Sprintf("restored member %d", i), got, want)
		gotOld, err := mcli.Get(ctx, "key/", clientv3.WithPrefix(), clientv3.WithRev(compacted.Header.Revision-10), clientv3.WithSerializable())
		if err != nil {
			t.Fatal(err)
		}
		equalKVs(t, fmt.Sprintf("restored member %d at revision %d", i, compacted.Header.Revision-10), gotOld, wantOld)
		hh, err := mcli.HashKV(ctx, m.Endpoint(), rev)
		if err != nil {
			t.Fatal(err)
		}
		if hh.Hash != st.Hash {
			t.Fatalf("restored member %d hashes %x at revision %d, the backup %x", i, hh.Hash, rev, st.Hash)
		}
		members, err := mcli.MemberList(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(members.Members) != 3 {
			t.Fatalf("restored member %d lists %d members, want the 3 of the new cluster", i, len(members.Members))
		}
	}
	rcli, err := restored.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer rcli.Close()
	put, err := rcli.Put(ctx, "after-restore", "x")
	if err != nil {
		t.Fatal(err)
	}
	if put.Header.Revision != rev+1 {
		t.Fatalf("first write after the restore at revision %d, want %d", put.Header.Revision, rev+1)
	}
}

func equalKVs(t *testing.T, what string, got, want *clientv3.GetResponse) {
	t.Helper()
	if len(got.Kvs) != len(want.Kvs) {
		t.Fatalf("%s: %d keys, want %d", what, len(got.Kvs), len(want.Kvs))
	}
	for i := range want.Kvs {
		if !proto.Equal(got.Kvs[i], want.Kvs[i]) {
			t.Fatalf("%s: key %d is %v, want %v", what, i, got.Kvs[i], want.Kvs[i])
		}
	}
}
