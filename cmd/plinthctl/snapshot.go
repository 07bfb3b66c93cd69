package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/plinthdb/plinth/internal/backup"
	"github.com/plinthdb/plinth/internal/server"
)

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot <subcommand>",
		Short: "Manages backups (snapshots) of a member's data",
	}
	cmd.AddCommand(a.snapshotSaveCommand(), a.snapshotStatusCommand(), a.snapshotRestoreCommand())
	return cmd
}

func (a *app) snapshotSaveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "save <filename>",
		Short: "Stores a backup of the member at --endpoints (exactly one) in a file",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("snapshot save expects one argument")
			}
			if len(a.endpoints) != 1 {
				return badArgs("snapshot must be requested to one selected node, not multiple %v", a.endpoints)
			}
			path := args[0]
			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			// The stream takes as long as the data: --command-timeout
			// does not bound it.
			version, err := a.saveSnapshot(cmd.Context(), c, path)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "Snapshot saved at %s\n", path)
			if version != "" {
				fmt.Fprintf(a.out, "Server version %s\n", version)
			}
			return nil
		},
	}
}

// saveSnapshot streams the member's backup into path.part, checks it, syncs
// it and renames it to path: path never holds a partial backup.
func (a *app) saveSnapshot(ctx context.Context, c *clientv3.Client, path string) (version string, err error) {
	part := path + ".part"
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("could not open %s (%w)", part, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(part)
		}
	}()
	stream, err := pb.NewMaintenanceClient(c.ActiveConnection()).Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		return "", err
	}
	progress := newProgress(a.errOut)
	var got uint64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", err
		}
		if resp.Version != "" {
			version = resp.Version
		}
		if _, err := f.Write(resp.Blob); err != nil {
			return "", fmt.Errorf("could not write snapshot: %w", err)
		}
		got += uint64(len(resp.Blob))
		progress.show(got, got+resp.RemainingBytes)
	}
	progress.done()
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("could not fsync snapshot: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if _, err := backup.Verify(part); err != nil {
		return "", err
	}
	if err := os.Rename(part, path); err != nil {
		return "", fmt.Errorf("could not rename %s to %s (%w)", part, path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		err = d.Sync()
		_ = d.Close()
		if err != nil {
			return "", fmt.Errorf("could not sync %s: %w", filepath.Dir(path), err)
		}
	}
	return version, nil
}

// progress draws a progress line on a terminal, and nothing elsewhere.
type progress struct {
	w       io.Writer
	enabled bool
	last    int
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*outWriter)
	var target io.Writer = w
	if ok {
		target = f.w
	}
	file, isFile := target.(*os.File)
	enabled := false
	if isFile {
		if st, err := file.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			enabled = true
		}
	}
	return &progress{w: w, enabled: enabled, last: -1}
}

func (p *progress) show(got, total uint64) {
	if !p.enabled || total == 0 {
		return
	}
	pct := int(got * 100 / total)
	if pct == p.last {
		return
	}
	p.last = pct
	const width = 40
	bar := strings.Repeat("=", pct*width/100) + strings.Repeat(" ", width-pct*width/100)
	fmt.Fprintf(p.w, "\r[%s] %3d%% %s / %s", bar, pct, byteSize(got), byteSize(total))
}

func (p *progress) done() {
	if p.enabled && p.last >= 0 {
		fmt.Fprintln(p.w)
	}
}

// snapshotStatus is a backup's status. Its JSON is the shape of etcdutl's
// snapshot status -w json, with plinth's compact revision added.
type snapshotStatus struct {
	Hash            uint32 `json:"hash"`
	Revision        int64  `json:"revision"`
	TotalKey        int64  `json:"totalKey"`
	TotalSize       int64  `json:"totalSize"`
	CompactRevision int64  `json:"compactRevision"`
}

func (a *app) snapshotStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status <filename>",
		Short: "Checks a backup file and prints its hash, revision, live keys and size",
		Long: `Checks a backup file whole (its SHA-256 and framing) and prints its hash (the
HashKV of the store at the backup's revision: compare it with
'endpoint hashkv --rev=REVISION' on a member), revision, live keys and size.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("snapshot status requires exactly one argument")
			}
			info, err := backup.Verify(args[0])
			if err != nil {
				return err
			}
			st := snapshotStatus{Hash: info.Hash, Revision: info.Revision, TotalKey: info.Keys, TotalSize: info.Size, CompactRevision: info.CompactRevision}
			titles := []string{"HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "COMPACT REVISION"}
			row := []string{strconv.FormatUint(uint64(st.Hash), 16), strconv.FormatInt(st.Revision, 10),
				strconv.FormatInt(st.TotalKey, 10), byteSize(uint64(st.TotalSize)), strconv.FormatInt(st.CompactRevision, 10)}
			switch a.writeOut {
			case "simple":
				fmt.Fprintln(a.out, strings.Join(row, ", "))
			case "json":
				return (&jsonPrinter{w: a.out}).write(st)
			case "table":
				cols := make([]column, len(titles))
				for i, t := range titles {
					cols[i] = column{title: t}
				}
				writeTable(a.out, cols, [][]string{row})
			case "fields":
				for i, t := range titles {
					fmt.Fprintf(a.out, "%q : %s\n", t, row[i])
				}
			default:
				return badFeature("unsupported output format %q (simple, json, table, fields)", a.writeOut)
			}
			return nil
		},
	}
}

func (a *app) snapshotRestoreCommand() *cobra.Command {
	var dataDir, name, initialCluster, advertisePeer, token string
	var skipHashCheck bool
	cmd := &cobra.Command{
		Use:   "restore <filename> [options]",
		Short: "Restores a backup or an etcd snapshot into the data dir of a member of a new cluster",
		Long: `Restores a backup made by 'snapshot save' into a new data dir for a member of a
new cluster: every key, version and revision as the backup holds them, with a
new cluster ID and the members of --initial-cluster. Run it once per member,
with the same file and the same --initial-cluster and --initial-cluster-token,
then start each member with the flags given here.

The file may also be an etcd snapshot ('etcdctl snapshot save'): its keys,
every version etcd kept, the revision, the compaction revision and the leases
with their keys are restored (etcd's members, alarms and auth are not). The
kind of file is told by its content.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return badArgs("snapshot restore requires exactly one argument")
			}
			if initialCluster == "" {
				initialCluster = name + "=" + advertisePeer
			}
			cluster, err := server.ParseInitialCluster(initialCluster)
			if err != nil {
				return badArgs("--initial-cluster: %v", err)
			}
			peers, err := server.ParseURLs(advertisePeer)
			if err != nil {
				return badArgs("--initial-advertise-peer-urls: %v", err)
			}
			cfg := server.Config{Name: name, DataDir: dataDir, InitialCluster: cluster, AdvertisePeerURLs: peers, InitialClusterToken: token}
			id, err := cfg.RestoreIdentity()
			if err != nil {
				return badArgs("%v", err)
			}
			logger := slog.New(slog.NewTextHandler(io.Discard, nil))
			info, err := backup.Restore(args[0], dataDir, id, backup.RestoreOptions{SkipHashCheck: skipHashCheck}, logger)
			if err != nil {
				return err
			}
			if e := info.Etcd; e != nil {
				fmt.Fprintf(a.out, "Read etcd snapshot %s: %d versions, %d leases, revision %d, compaction revision %d, applied index %d\n",
					args[0], e.Versions, e.Leases, e.Revision, e.CompactRevision, e.Index)
				fmt.Fprintf(a.out, "etcd's HashKV of the snapshot at revision %d: %d (compare: etcdctl endpoint hashkv --rev=%d on the member that saved it)\n",
					e.Revision, e.EtcdHash, e.Revision)
				if !e.Checksum {
					fmt.Fprintln(a.out, "Warning: the file carried no SHA-256; its integrity was not checked (--skip-hash-check)")
				}
				if e.AuthEnabled || e.AuthUsers > 0 {
					fmt.Fprintf(a.out, "Warning: etcd's auth (enabled: %v, %d users) is not restored: plinth has no auth yet\n", e.AuthEnabled, e.AuthUsers)
				}
			}
			fmt.Fprintf(a.out, "Restored %s (revision %d, %d keys) into %s: member %x of cluster %x\n",
				args[0], info.Revision, info.Keys, dataDir, id.MemberID, id.ClusterID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", "plinth.data", "path to the data directory to create")
	f.StringVar(&name, "name", "default", "human-readable name for this member")
	f.StringVar(&initialCluster, "initial-cluster", "", "initial cluster configuration for restore bootstrap (default: <name>=<initial-advertise-peer-urls>)")
	f.StringVar(&advertisePeer, "initial-advertise-peer-urls", "http://127.0.0.1:2380", "list of this member's peer URLs to advertise to the rest of the cluster")
	f.StringVar(&token, "initial-cluster-token", "etcd-cluster", "initial cluster token for the cluster during restore bootstrap")
	f.BoolVar(&skipHashCheck, "skip-hash-check", false, "accept an etcd database without the SHA-256 that 'etcdctl snapshot save' appends (a member's db file copied by hand)")
	return cmd
}
