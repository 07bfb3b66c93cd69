package server

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

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
	f, err := os.CreateTemp(s.cfg.DataDir, "backup-*.tmp")
	if err != nil {
		_ = snap.Close()
		return nil, 0, fmt.Errorf("backup: %w", err)
	}
	tmp := &tempFile{File: f}
	info, err := backup.Write(f, snap, index, term, time.Now())
	_ = snap.Close()
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		_ = tmp.Close()
		return nil, 0, err
	}
	s.logger.Info("backup made", "revision", info.Revision, "index", index, "bytes", info.Size)
	return tmp, info.Size, nil
}

// tempFile is a file removed when closed.
type tempFile struct{ *os.File }

func (t *tempFile) Close() error {
	err := t.File.Close()
	if rerr := os.Remove(t.Name()); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// removeStaleBackups removes the backup files a crash left in dir.
func removeStaleBackups(dir string) error {
	stale, err := filepath.Glob(filepath.Join(dir, "backup-*.tmp"))
	if err != nil {
		return err
	}
	for _, p := range stale {
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("remove stale backup %s: %w", p, err)
		}
	}
	return nil
}
