package server

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/plinthdb/plinth/internal/backup"
)

// RestoreIdentity derives from the flags of a new cluster (--name,
// --initial-cluster, --initial-advertise-peer-urls, --initial-cluster-token)
// who a member restored from a backup is: the IDs its first start with the
// same flags derives, so that the restored data dir is that member's.
func (c *Config) RestoreIdentity() (backup.Identity, error) {
	if err := c.validateInitialCluster(); err != nil {
		return backup.Identity{}, err
	}
	members := c.initialMembers()
	ids := make([]uint64, len(members))
	for i, m := range members {
		ids[i] = m.ID
	}
	return backup.Identity{
		ClusterID: clusterID(ids, c.InitialClusterToken),
		MemberID:  memberID(c.AdvertisePeerURLs, c.InitialClusterToken),
		Members:   members,
	}, nil
}

// Backup writes a backup of this member's state machine to a file in its
// data dir and returns it open at its start, with its size; closing it
// removes the file. Writing the whole backup before sending any of it keeps
// a slow client from holding a Pebble snapshot (and the versions it pins)
// for as long as it takes to read, and gives the stream its exact size.
func (s *Server) Backup() (io.ReadCloser, int64, error) {
	snap, index, term, err := s.node.StateImage()
	if err != nil {
		return nil, 0, err
	}
	fsys := s.cfg.FS
	path := fsys.PathJoin(s.cfg.DataDir, fmt.Sprintf("%s%d%s", backupFilePrefix, time.Now().UnixNano(), backupFileSuffix))
	f, err := fsys.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		_ = snap.Close()
		return nil, 0, fmt.Errorf("backup: %w", err)
	}
	info, err := backup.Write(f, snap, index, term, time.Now())
	_ = snap.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	var r vfs.File
	if err == nil {
		r, err = fsys.Open(path)
	}
	if err != nil {
		_ = fsys.Remove(path)
		return nil, 0, fmt.Errorf("backup: %w", err)
	}
	s.logger.Info("backup made", "revision", info.Revision, "index", index, "bytes", info.Size)
	return &tempFile{File: r, fs: fsys, path: path}, info.Size, nil
}

// Names of the backup files a member writes in its data dir while it streams
// them.
const (
	backupFilePrefix = "backup-"
	backupFileSuffix = ".tmp"
)

// tempFile is a file removed when closed.
type tempFile struct {
	vfs.File
	fs   vfs.FS
	path string
}

func (t *tempFile) Close() error {
	err := t.File.Close()
	if rerr := t.fs.Remove(t.path); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// removeStaleBackups removes the backup files a crash left in dir.
func removeStaleBackups(fsys vfs.FS, dir string) error {
	names, err := fsys.List(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, name := range names {
		if strings.HasPrefix(name, backupFilePrefix) && strings.HasSuffix(name, backupFileSuffix) {
			if err := fsys.Remove(fsys.PathJoin(dir, name)); err != nil {
				return fmt.Errorf("remove stale backup %s: %w", name, err)
			}
		}
	}
	return nil
}
