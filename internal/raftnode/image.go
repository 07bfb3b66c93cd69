package raftnode

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/plinthdb/plinth/internal/storage"
)

// StateImage returns a consistent view of the state machine for a backup: a
// Pebble snapshot, the applied index it holds, and that entry's term, which
// an image (package snapshot) records. The caller closes the snapshot.
//
// The term comes from the log, which may drop the entry between taking the
// snapshot and asking; then it tries again with a newer snapshot.
func (n *Node) StateImage() (snap *pebble.Snapshot, index, term uint64, err error) {
	for attempt := 0; ; attempt++ {
		snap = n.db.NewSnapshot()
		index, err = storage.GetMetaUint64(snap, storage.MetaAppliedIndex)
		if err != nil {
			_ = snap.Close()
			return nil, 0, 0, fmt.Errorf("raftnode: state image: %w", err)
		}
		term, err = n.log.Term(index)
		if err == nil {
			return snap, index, term, nil
		}
		_ = snap.Close()
		if attempt == 10 {
			return nil, 0, 0, fmt.Errorf("raftnode: state image: the term of applied entry %d is unknown: %w", index, err)
		}
		time.Sleep(time.Millisecond)
	}
}
