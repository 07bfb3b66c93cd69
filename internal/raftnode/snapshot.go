package raftnode

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	raftpb "go.etcd.io/raft/v3/raftpb"

	"github.com/plinthdb/plinth/internal/snapshot"
	"github.com/plinthdb/plinth/internal/storage"
)

// Raft snapshots. A follower that needs entries the log no longer has gets the
// state machine instead:
//
//   - Raft asks the log store for a snapshot (makeSnapshot): a Pebble
//     snapshot, whose applied index and configuration describe it, is kept
//     in outgoing under an ID, and the raftpb.Snapshot carries only that ID.
//   - The transport sends the MsgSnap on a connection of its own and asks
//     WriteSnapshot for the data: the image of the Pebble snapshot (package
//     snapshot), streamed as one sstable.
//   - The receiver stores the image in a file (ReceiveSnapshot), points the
//     message's data at the file, and steps Raft with it. If Raft takes it,
//     the next Ready carries it: the apply loop installs it in order with the
//     committed entries (one atomic Pebble ingest), the state machine and
//     log store reload, and only then does the raft loop persist the rest of
//     the Ready.

// outgoingTTL bounds how long a Pebble snapshot waits for its transfer to
// begin; Raft sends every snapshot it asks for at once, so an older one was
// lost on the way.
const outgoingTTL = 10 * time.Minute

// outgoing holds the Pebble snapshots made for Raft until they are sent.
type outgoing struct {
	mu    sync.Mutex // guards the fields below; never held across I/O
	next  uint64
	snaps map[uint64]*pendingSnapshot
}

type pendingSnapshot struct {
	snap        *pebble.Snapshot
	index, term uint64
	made        time.Time
}

// makeSnapshot is the log store's snapshotter. It runs on the raft loop.
func (n *Node) makeSnapshot() (_ *raftpb.Snapshot, err error) {
	snap := n.db.NewSnapshot()
	defer func() {
		if err != nil {
			_ = snap.Close()
		}
	}()
	applied, err := storage.GetMetaUint64(snap, storage.MetaAppliedIndex)
	if err != nil {
		return nil, err
	}
	cs, err := storage.GetConfState(snap)
	if err != nil {
		return nil, fmt.Errorf("raftnode: snapshot: %w", err)
	}
	term, err := n.log.Term(applied)
	if err != nil {
		n.cfg.Logger.Warn("no snapshot: the applied entry's term is unknown", "index", applied, "err", err)
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	o := &n.outgoing
	o.mu.Lock()
	if o.snaps == nil {
		o.snaps = map[uint64]*pendingSnapshot{}
	}
	now := time.Now()
	for id, p := range o.snaps {
		if now.Sub(p.made) > outgoingTTL {
			_ = p.snap.Close()
			delete(o.snaps, id)
		}
	}
	o.next++
	id := o.next
	o.snaps[id] = &pendingSnapshot{snap: snap, index: applied, term: term, made: now}
	o.mu.Unlock()
	n.cfg.Logger.Info("made a snapshot for a follower", "index", applied, "term", term)
	return &raftpb.Snapshot{
		Data:     binary.BigEndian.AppendUint64(nil, id),
		Metadata: &raftpb.SnapshotMetadata{Index: &applied, Term: &term, ConfState: cs},
	}, nil
}

// takeOutgoing removes the Pebble snapshot m refers to from outgoing.
func (n *Node) takeOutgoing(m *raftpb.Message) *pendingSnapshot {
	data := m.GetSnapshot().GetData()
	if len(data) != 8 {
		return nil
	}
	id := binary.BigEndian.Uint64(data)
	o := &n.outgoing
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.snaps[id]
	delete(o.snaps, id)
	return p
}

// WriteSnapshot writes the image of the snapshot m carries to w, and releases
// the snapshot. The transport calls it, off the raft loop.
func (n *Node) WriteSnapshot(w io.Writer, m *raftpb.Message) error {
	p := n.takeOutgoing(m)
	if p == nil {
		return fmt.Errorf("raftnode: snapshot %x is unknown or expired", m.GetSnapshot().GetData())
	}
	defer p.snap.Close()
	return snapshot.Write(w, p.snap, p.index, p.term)
}

// DiscardSnapshot releases the snapshot m carries, which will not be sent.
func (n *Node) DiscardSnapshot(m *raftpb.Message) {
	if p := n.takeOutgoing(m); p != nil {
		_ = p.snap.Close()
	}
}

// releaseOutgoing closes every snapshot not yet sent; at Stop.
func (n *Node) releaseOutgoing() {
	o := &n.outgoing
	o.mu.Lock()
	defer o.mu.Unlock()
	for id, p := range o.snaps {
		_ = p.snap.Close()
		delete(o.snaps, id)
	}
}

// ReceiveSnapshot stores the image of the snapshot m announces, read from r,
// and hands m to Raft pointing at it. The transport calls it.
func (n *Node) ReceiveSnapshot(r io.Reader, m *raftpb.Message) error {
	if n.cfg.SnapshotDir == "" {
		return fmt.Errorf("raftnode: this member takes no snapshots")
	}
	img, err := snapshot.Receive(n.cfg.FS, r, n.cfg.SnapshotDir)
	if err != nil {
		return err
	}
	md := m.GetSnapshot().GetMetadata()
	if img.Index != md.GetIndex() || img.Term != md.GetTerm() {
		_ = snapshot.Remove(n.cfg.FS, img)
		return fmt.Errorf("raftnode: snapshot image is of entry %d term %d, the message announced %d term %d", img.Index, img.Term, md.GetIndex(), md.GetTerm())
	}
	m.Snapshot.Data = []byte(img.Path)
	if !n.recvQueue.push(m) {
		_ = snapshot.Remove(n.cfg.FS, img)
		return fmt.Errorf("raftnode: receive queue full; snapshot %d dropped", img.Index)
	}
	n.cfg.Logger.Info("received a snapshot", "index", img.Index, "term", img.Term, "from", fmt.Sprintf("%x", m.GetFrom()))
	return nil
}

// imageOf is the image a snapshot that Raft took refers to.
func imageOf(s *raftpb.Snapshot) snapshot.Image {
	md := s.GetMetadata()
	return snapshot.Image{Path: string(s.GetData()), Index: md.GetIndex(), Term: md.GetTerm()}
}

// installSnapshot has the apply loop install the snapshot of rd, after the
// entries handed to it before, and waits until it is done.
func (n *Node) installSnapshot(s *raftpb.Snapshot) error {
	img := imageOf(s)
	done := make(chan error, 1)
	n.applyQ.push(applyTask{image: &img, done: done})
	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-n.stopC:
		return ErrStopped
	case <-n.failedC:
		return n.failErr
	}
	n.truncatedTo = img.Index
	n.soleVoter = isSoleVoter(s.GetMetadata().GetConfState(), n.cfg.ID)
	n.lease.setVoters(s.GetMetadata().GetConfState(), n.cfg.ID)
	n.publishLocalReads()
	n.cfg.Logger.Info("installed a snapshot", "index", img.Index, "term", img.Term)
	return nil
}

// install runs on the apply loop.
func (n *Node) install(img snapshot.Image) error {
	if err := n.sm.Install(img); err != nil {
		return fmt.Errorf("raftnode: install snapshot %d: %w", img.Index, err)
	}
	if err := n.log.Reload(); err != nil {
		return fmt.Errorf("raftnode: reload the log after snapshot %d: %w", img.Index, err)
	}
	n.appliedIdx.Store(img.Index)
	if img.Index > n.lastIdx.Load() {
		n.lastIdx.Store(img.Index)
	}
	n.reads.advance(img.Index)
	n.installed.Add(1)
	return nil
}

// SnapshotsInstalled counts the snapshots this member installed since it
// started.
func (n *Node) SnapshotsInstalled() uint64 { return n.installed.Load() }
