package backup

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/plinthdb/plinth/internal/etcdsnap"
	"github.com/plinthdb/plinth/internal/membership"
	"github.com/plinthdb/plinth/internal/mvcc"
	"github.com/plinthdb/plinth/internal/snapshot"
	"github.com/plinthdb/plinth/internal/storage"
)

// Identity is who a restored member is: the new cluster's ID, the member's
// own ID, and the cluster's initial members, derived from the flags of the
// new cluster as its members derive them at start.
type Identity struct {
	ClusterID uint64
	MemberID  uint64
	Members   []membership.Member
}

// Restore builds the data dir dataDir of a member of a new cluster from the
// backup at path: every key, version, revision and the rest of the state
// machine as the backup holds them, and the membership, cluster ID and
// member ID of id instead of the old cluster's. The member starts with an
// empty Raft log at the backup's applied index, and its configuration is the
// new members, all voters: every member restored from the same file with the
// same flags starts from the same state, and they elect a leader.
//
// dataDir must not exist. Restore builds the data dir beside it and renames
// it into place once it is whole and synced, so a failure leaves nothing
// half-written at dataDir.
//
// The file may also be an etcd snapshot (what `etcdctl snapshot save`
// writes), told apart by its content: its keys, every version etcd kept,
// revisions and leases are loaded as package etcdsnap describes, and Info.Etcd
// says what it held.
func Restore(path, dataDir string, id Identity, opts RestoreOptions, logger *slog.Logger) (Info, error) {
	if _, err := os.Stat(dataDir); err == nil {
		return Info{}, fmt.Errorf("backup: data dir %s exists: restore makes a new one", dataDir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("backup: %w", err)
	}
	fromEtcd, err := isEtcdSnapshot(path)
	if err != nil {
		return Info{}, err
	}
	var info Info
	if !fromEtcd {
		if info, err = Verify(path); err != nil {
			return Info{}, err
		}
	}
	building := dataDir + ".restoring"
	if err := os.RemoveAll(building); err != nil {
		return Info{}, fmt.Errorf("backup: clear %s: %w", building, err)
	}
	if fromEtcd {
		info, err = buildFromEtcd(path, building, id, opts, logger)
	} else {
		err = build(path, building, info, id, logger)
	}
	if err != nil {
		_ = os.RemoveAll(building)
		return Info{}, err
	}
	if err := os.Rename(building, dataDir); err != nil {
		_ = os.RemoveAll(building)
		return Info{}, fmt.Errorf("backup: move the restored data dir into place: %w", err)
	}
	if err := syncDir(filepath.Dir(dataDir)); err != nil {
		return Info{}, err
	}
	return info, nil
}

// RestoreOptions are the choices of a restore.
type RestoreOptions struct {
	// SkipHashCheck accepts an etcd database without the SHA-256 that
	// `etcdctl snapshot save` appends (an etcd member's db file copied by
	// hand), as etcdutl's --skip-hash-check does.
	SkipHashCheck bool
}

// isEtcdSnapshot tells an etcd snapshot (a bbolt database) from anything
// else by its first page.
func isEtcdSnapshot(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("backup: %w", err)
	}
	defer f.Close()
	head := make([]byte, 64)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("backup: read %s: %w", path, err)
	}
	return etcdsnap.Looks(head[:n]), nil
}

// buildFromEtcd builds the data dir dir from the etcd snapshot at path. The
// member's empty Raft log starts at etcd's applied index and term.
func buildFromEtcd(path, dir string, id Identity, opts RestoreOptions, logger *slog.Logger) (info Info, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Info{}, fmt.Errorf("backup: %w", err)
	}
	db, err := storage.Open(storage.DatabaseDir(dir), logger, nil)
	if err != nil {
		return Info{}, err
	}
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("backup: close restored database: %w", cerr)
		}
	}()
	ei, err := etcdsnap.Load(path, filepath.Join(dir, "etcd-snapshot.db"), db, opts.SkipHashCheck)
	if err != nil {
		return Info{}, err
	}
	index, term := max(ei.Index, 1), max(ei.Term, 1)
	b := db.NewBatch()
	defer b.Close()
	if err := storage.PutMetaUint64(b, storage.MetaAppliedIndex, index); err != nil {
		return Info{}, err
	}
	if err := b.Set(storage.MetaKey(storage.MetaLogTruncated), storage.TruncationMark(index, term), nil); err != nil {
		return Info{}, fmt.Errorf("backup: write the log's start: %w", err)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return Info{}, fmt.Errorf("backup: write the log's start: %w", err)
	}
	h, err := mvcc.HashOf(db)
	if err != nil {
		return Info{}, fmt.Errorf("backup: hash the restored store: %w", err)
	}
	if err := rewriteIdentity(db, index, term, id); err != nil {
		return Info{}, err
	}
	return Info{Revision: h.Revision, CompactRevision: h.CompactRevision, Keys: h.Keys, Hash: h.Hash, Size: ei.Size, Etcd: &ei}, nil
}

func build(path, dir string, info Info, id Identity, logger *slog.Logger) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer f.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	db, err := storage.Open(storage.DatabaseDir(dir), logger, nil)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("backup: close restored database: %w", cerr)
		}
	}()
	// The image checks its own framing and CRC as it is received.
	img, err := snapshot.Receive(vfs.Default, io.LimitReader(f, info.ImageSize), filepath.Join(dir, "snap"))
	if err != nil {
		return fmt.Errorf("backup: %s: %w", path, err)
	}
	if err := snapshot.Install(db, img); err != nil {
		_ = snapshot.Remove(vfs.Default, img)
		return fmt.Errorf("backup: %w", err)
	}
	if err := snapshot.Remove(vfs.Default, img); err != nil {
		return err
	}
	return rewriteIdentity(db, img.Index, img.Term, id)
}

// rewriteIdentity replaces the old cluster's membership with the new one's,
// and sets the member's Raft state: an empty log at the image's entry
// (the image set the truncation mark there), committed, with the new
// members as the configuration.
func rewriteIdentity(db *pebble.DB, index, term uint64, id Identity) error {
	b := db.NewBatch()
	defer b.Close()
	// The old cluster's members, and their alarms, are not the new one's.
	for _, prefix := range []byte{storage.PrefixMembers, storage.PrefixAlarms} {
		span := storage.PrefixSpan(prefix)
		if err := b.DeleteRange(span.Start, span.End, nil); err != nil {
			return fmt.Errorf("backup: clear the old membership: %w", err)
		}
	}
	cs := &raftpb.ConfState{}
	for _, m := range id.Members {
		m.ClientURLs, m.IsLearner = nil, false // published again by each member at start
		if err := membership.Put(b, m); err != nil {
			return err
		}
		cs.Voters = append(cs.Voters, m.ID)
	}
	if err := storage.SaveConfState(b, cs); err != nil {
		return err
	}
	hs, err := proto.Marshal(&raftpb.HardState{Term: &term, Commit: &index})
	if err != nil {
		return fmt.Errorf("backup: encode hard state: %w", err)
	}
	if err := b.Set(storage.MetaKey(storage.MetaHardState), hs, nil); err != nil {
		return fmt.Errorf("backup: write hard state: %w", err)
	}
	for name, v := range map[string]uint64{
		storage.MetaClusterID: id.ClusterID,
		storage.MetaMemberID:  id.MemberID,
		storage.MetaJoined:    0, // bootstrapped with the new cluster
	} {
		if err := storage.PutMetaUint64(b, name, v); err != nil {
			return err
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("backup: write the new identity: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("backup: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("backup: sync %s: %w", dir, err)
	}
	return nil
}
