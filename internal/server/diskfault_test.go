package server

// Disk faults: a member runs in a child process (this test binary, run
// again) over a file system that, once told to (SIGUSR1), fails fsyncs or
// runs out of space. A failed fsync also throws away what it should have
// synced, as Linux may do with the dirty pages of a file whose writeback
// failed: a member that acknowledged a write it could not sync, or retried
// the fsync and carried on, loses acknowledged writes, and the check after
// the restart sees it. The member must stop with a clear error; restarted
// over the same files without the fault ("space freed"), it serves every
// write acknowledged before.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// faultFS injects one kind of fault, once on, into the files whose names
// match.
type faultFS struct {
	vfs.FS
	fault string // "fsync" or "nospace"
	match func(name string) bool
	on    atomic.Bool
	// injected counts the faults injected.
	injected atomic.Int64
}

var errInjectedSync = errors.New("injected fsync failure: input/output error")

func (fs *faultFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !fs.match(name) {
		return f, err
	}
	return &faultFile{File: f, fs: fs, name: name}, nil
}

func (fs *faultFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, category)
	return fs.wrap(name, f, err)
}

func (fs *faultFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, category)
	return fs.wrap(newname, f, err)
}

func (fs *faultFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, category, opts...)
	return fs.wrap(name, f, err)
}

// faultFile tracks how much of itself was written and how much synced.
type faultFile struct {
	vfs.File
	fs     *faultFS
	name   string
	mu     sync.Mutex
	pos    int64 // end of what Write wrote
	synced int64 // pos at the last successful sync
}

func (f *faultFile) Write(p []byte) (int, error) {
	if f.fs.fault == "nospace" && f.fs.on.Load() {
		f.fs.injected.Add(1)
		return 0, syscall.ENOSPC
	}
	n, err := f.File.Write(p)
	f.mu.Lock()
	f.pos += int64(n)
	f.mu.Unlock()
	return n, err
}

// failSync fails a sync, and drops what it should have made durable: the
// bytes written since the last sync read back as zeros.
func (f *faultFile) failSync() error {
	f.fs.injected.Add(1)
	f.mu.Lock()
	from, to := f.synced, f.pos
	f.mu.Unlock()
	if to > from {
		w, err := os.OpenFile(f.name, os.O_WRONLY, 0)
		if err == nil {
			_, _ = w.WriteAt(make([]byte, to-from), from)
			_ = w.Close()
		}
	}
	return errInjectedSync
}

func (f *faultFile) syncing() bool { return f.fs.fault == "fsync" && f.fs.on.Load() }

func (f *faultFile) synced1(err error) error {
	if err == nil {
		f.mu.Lock()
		f.synced = f.pos
		f.mu.Unlock()
	}
	return err
}

func (f *faultFile) Sync() error {
	if f.syncing() {
		return f.failSync()
	}
	return f.synced1(f.File.Sync())
}

func (f *faultFile) SyncData() error {
	if f.syncing() {
		return f.failSync()
	}
	return f.synced1(f.File.SyncData())
}

func (f *faultFile) SyncTo(length int64) (bool, error) {
	if f.syncing() {
		return false, f.failSync()
	}
	full, err := f.File.SyncTo(length)
	if full {
		err = f.synced1(err)
	}
	return full, err
}

// diskFaultConfig is the configuration of the member of a disk fault test,
// in the parent and in the child alike.
func diskFaultConfig(dataDir, client, peer string) Config {
	cu := url.URL{Scheme: "http", Host: client}
	pu := url.URL{Scheme: "http", Host: peer}
	return Config{
		Name:                "faulty",
		DataDir:             dataDir,
		ListenClientURLs:    []url.URL{cu},
		AdvertiseClientURLs: []url.URL{cu},
		ListenPeerURLs:      []url.URL{pu},
		AdvertisePeerURLs:   []url.URL{pu},
		InitialCluster:      map[string][]url.URL{"faulty": {pu}},
		InitialClusterState: "new",
		InitialClusterToken: "disk-fault",
		MaxRequestBytes:     1572864,
		HeartbeatInterval:   10 * time.Millisecond,
		ElectionTimeout:     100 * time.Millisecond,
		SnapshotCount:       100,
	}
}

// TestDiskFaultChild is the member of TestDiskFaults, in its own process.
func TestDiskFaultChild(t *testing.T) {
	spec := os.Getenv("PLINTH_DISKFAULT_CHILD")
	if spec == "" {
		t.Skip("run by TestDiskFaults")
	}
	parts := strings.Split(spec, ",") // fault,files,datadir,client,peer
	fs := &faultFS{FS: vfs.Default, fault: parts[0]}
	switch parts[1] {
	case "wal":
		fs.match = func(name string) bool { return strings.HasSuffix(name, ".log") }
	default:
		fs.match = func(string) bool { return true }
	}
	cfg := diskFaultConfig(parts[2], parts[3], parts[4])
	cfg.FS = fs
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		os.Exit(4)
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		os.Exit(4)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		<-sig
		fs.on.Store(true)
	}()
	fmt.Println("serving")
	select {
	case <-srv.Failed():
		fmt.Fprintln(os.Stderr, "member failed:", srv.Err())
		os.Exit(3)
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "the fault never stopped the member")
		os.Exit(5)
	}
}

// A failing fsync or a full disk stops the member with a clear error, and
// it acknowledges nothing it could not sync: restarted without the fault,
// it serves every write acknowledged before.
func TestDiskFaults(t *testing.T) {
	if os.Getenv("PLINTH_DISKFAULT_CHILD") != "" {
		t.Skip("in the child")
	}
	for _, tc := range []struct {
		fault, files string
		wantErr      string // in the child's last words
	}{
		{"fsync", "wal", errInjectedSync.Error()},
		{"nospace", "wal", syscall.ENOSPC.Error()},
		{"fsync", "all", errInjectedSync.Error()},
	} {
		t.Run(tc.fault+"-"+tc.files, func(t *testing.T) {
			dataDir := t.TempDir()
			client, peer := freeLoopbackURL(t).Host, freeLoopbackURL(t).Host
			var stderr bytes.Buffer
			cmd := exec.Command(os.Args[0], "-test.run=^TestDiskFaultChild$", "-test.v")
			cmd.Env = append(os.Environ(), "PLINTH_DISKFAULT_CHILD="+strings.Join([]string{tc.fault, tc.files, dataDir, client, peer}, ","))
			cmd.Stderr = &stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() {
				_, _ = bytes.NewBuffer(nil).ReadFrom(stdout)
				exited <- cmd.Wait()
			}()
			t.Cleanup(func() { _ = cmd.Process.Kill() })

			conn, err := grpc.NewClient(client, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			kv := pb.NewKVClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()

			// Writes, then the fault, then writes until the member
			// stops.
			var mu sync.Mutex
			var acked []ackedWrite
			var faulted atomic.Bool
			var afterFault atomic.Int64 // writes acknowledged after the fault began
			var wg sync.WaitGroup
			stop := make(chan struct{})
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for seq := 0; ; seq++ {
						select {
						case <-stop:
							return
						default:
						}
						key, value := fmt.Sprintf("key/%d", seq%10), fmt.Sprintf("w%d-%d", w, seq)
						rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
						resp, err := kv.Put(rctx, &pb.PutRequest{Key: []byte(key), Value: []byte(value)})
						rcancel()
						if err != nil {
							time.Sleep(5 * time.Millisecond)
							continue
						}
						if faulted.Load() {
							afterFault.Add(1)
						}
						mu.Lock()
						acked = append(acked, ackedWrite{key: key, value: value, rev: resp.Header.Revision})
						mu.Unlock()
					}
				}()
			}
			waitFor(ctx, t, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 100 })
			faulted.Store(true)
			if err := cmd.Process.Signal(syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			var exitErr error
			select {
			case exitErr = <-exited:
			case <-time.After(45 * time.Second):
				t.Fatalf("the member kept running after the fault: %s", tail(stderr.String(), 3000))
			}
			close(stop)
			wg.Wait()
			if exitErr == nil || strings.Contains(stderr.String(), "the fault never stopped the member") {
				t.Fatalf("the member did not stop on the fault (%v): %s", exitErr, tail(stderr.String(), 3000))
			}
			last := stderr.String()
			if !strings.Contains(last, tc.wantErr) {
				t.Fatalf("the member stopped (%v) without saying %q:\n%s", exitErr, tc.wantErr, tail(last, 3000))
			}
			t.Logf("member stopped (%v): %s", exitErr, firstLineWith(last, tc.wantErr))

			// Space freed: restart on the same files, without faults.
			cfg := diskFaultConfig(dataDir, client, peer)
			cfg.Logger = testLogger("faulty")
			srv, err := New(cfg)
			if err != nil {
				t.Fatalf("restart after the fault: %v", err)
			}
			defer srv.Stop()
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
			defer rcancel()
			head, err := kv.Range(rctx, &pb.RangeRequest{Key: []byte("key/")}, grpc.WaitForReady(true))
			for err != nil && rctx.Err() == nil {
				time.Sleep(10 * time.Millisecond)
				head, err = kv.Range(rctx, &pb.RangeRequest{Key: []byte("key/")})
			}
			if err != nil {
				t.Fatalf("read after restart: %v", err)
			}
			for _, w := range acked {
				if w.rev > head.Header.Revision {
					t.Fatalf("%s=%q was acknowledged at revision %d, but after the fault and restart the revision is %d", w.key, w.value, w.rev, head.Header.Revision)
				}
				resp, err := kv.Range(rctx, &pb.RangeRequest{Key: []byte(w.key), Revision: w.rev})
				if err != nil {
					t.Fatalf("read %s at %d after restart: %v", w.key, w.rev, err)
				}
				if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != w.value || resp.Kvs[0].ModRevision != w.rev {
					t.Fatalf("%s=%q was acknowledged at revision %d, after the fault and restart it reads %v", w.key, w.value, w.rev, resp.Kvs)
				}
			}
			if _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("after"), Value: []byte("restart")}); err != nil {
				t.Fatalf("put after restart: %v", err)
			}
			t.Logf("%d acknowledged writes served after restart (%d acknowledged after the fault was switched on, before it struck)", len(acked), afterFault.Load())
		})
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func firstLineWith(s, sub string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			return tail(line, 400)
		}
	}
	return ""
}
