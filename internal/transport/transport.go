// Package transport carries Raft messages between the members of a cluster.
//
// Each member keeps one outgoing TCP stream to every peer, written by a
// goroutine of its own from a bounded queue: Send never blocks, so a slow or
// dead peer can never hold back the raft loop. When a peer's queue is full the
// message is dropped and Raft is told the peer is unreachable (it retransmits).
// A broken stream is redialed with backoff. Snapshots travel on a separate
// connection per snapshot, so a large one never delays heartbeats.
//
// Every connection opens with a handshake naming the cluster and both members;
// the receiver refuses a peer of another cluster, or a message meant for
// another member, and says why on both sides. The handshake also carries the
// sender's vote hold (Config.VoteHold), which a leader's read lease must not
// outlast.
//
// The transport knows nothing of what a snapshot holds: the Handler writes and
// reads its bytes. It never steps Raft itself; it hands what it receives to the
// Handler.
package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"

	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Handler receives what peers send, and produces and consumes snapshot data.
// Its methods are called from the transport's goroutines, concurrently.
type Handler interface {
	// Process hands a received message to Raft. It must not block for long:
	// a full queue drops the message (Raft retransmits).
	Process(m *raftpb.Message)
	// ReportUnreachable tells Raft that a message to id could not be sent.
	ReportUnreachable(id uint64)
	// ReportSnapshot tells Raft whether the snapshot to id arrived.
	ReportSnapshot(id uint64, ok bool)
	// WriteSnapshot writes the data of the snapshot that m (a MsgSnap)
	// carries to w, and releases it whatever the outcome.
	WriteSnapshot(w io.Writer, m *raftpb.Message) error
	// DiscardSnapshot releases the data of the snapshot m carries, which
	// will not be sent.
	DiscardSnapshot(m *raftpb.Message)
	// ReceiveSnapshot reads the data of the snapshot m announces from r,
	// and hands m to Raft once the data is safely stored.
	ReceiveSnapshot(r io.Reader, m *raftpb.Message) error
}

// Dialer opens connections to peers. It is the seam for TLS: a TLS dialer
// wraps net.Dialer.
type Dialer interface {
	Dial(network, addr string) (net.Conn, error)
}

// Config configures a Transport.
type Config struct {
	ClusterID uint64
	ID        uint64 // this member
	Handler   Handler
	Logger    *slog.Logger
	Dialer    Dialer // nil: plain TCP
	// Members, when not nil, answers a new member's question of who is in
	// the cluster (see FetchMembers): the encoded member records.
	Members func() [][]byte
	// Blocked, when not nil, injects network faults for tests: every
	// message between two members it reports blocked is dropped, sent or
	// received, as a network partition drops it.
	Blocked func(from, to uint64) bool
	// VoteHold is how long this member, having heard from its leader,
	// refuses to vote for another (raftnode.VoteHold): told to every peer
	// it connects to (PeerVoteHold).
	VoteHold time.Duration
}

// Queue and timing bounds.
const (
	peerQueueSize  = 4096
	dialTimeout    = time.Second
	writeTimeout   = 5 * time.Second
	minBackoff     = 50 * time.Millisecond
	maxBackoff     = time.Second
	maxMessageSize = 256 << 20
)

// Transport sends and receives Raft messages.
type Transport struct {
	cfg Config

	mu        sync.Mutex // guards the fields below; never held across I/O
	peers     map[uint64]*peer
	removed   map[uint64]bool
	listeners []net.Listener
	conns     map[net.Conn]uint64      // accepted and open, with the peer each comes from (0 until known)
	voteHolds map[uint64]time.Duration // each peer's, from its last handshake
	stopped   bool

	wg      sync.WaitGroup
	metrics transportMetrics
}

// New returns a transport with no peers.
func New(cfg Config) *Transport {
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{Timeout: dialTimeout}
	}
	return &Transport{
		cfg:       cfg,
		peers:     map[uint64]*peer{},
		removed:   map[uint64]bool{},
		conns:     map[net.Conn]uint64{},
		voteHolds: map[uint64]time.Duration{},
		metrics:   newTransportMetrics(),
	}
}

// AddPeer starts sending to member id at addrs (host:port). Adding a known
// peer updates its addresses.
func (t *Transport) AddPeer(id uint64, addrs []string) {
	if id == t.cfg.ID {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped || t.removed[id] {
		return
	}
	if p, ok := t.peers[id]; ok {
		p.setAddrs(addrs)
		return
	}
	p := newPeer(t, id, addrs)
	t.peers[id] = p
	t.wg.Add(1)
	go func() { defer t.wg.Done(); p.run() }()
}

// RemovePeer stops sending to member id, for good: a removed member's
// connections are refused from then on, and those it has open are closed, so
// that its next message finds out. The removed member may never see the entry
// that removed it (the leader stops sending to it), and then this refusal is
// how it learns to stop.
func (t *Transport) RemovePeer(id uint64) {
	t.mu.Lock()
	p := t.peers[id]
	delete(t.peers, id)
	delete(t.voteHolds, id)
	t.removed[id] = true
	for c, from := range t.conns {
		if from == id {
			_ = c.Close()
		}
	}
	t.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// Send queues msgs for their peers. It never blocks.
func (t *Transport) Send(msgs []*raftpb.Message) {
	for _, m := range msgs {
		to := m.GetTo()
		if t.blocked(t.cfg.ID, to) {
			if m.GetType() == raftpb.MessageType_MsgSnap {
				t.cfg.Handler.DiscardSnapshot(m)
				t.cfg.Handler.ReportSnapshot(to, false)
			}
			continue
		}
		t.mu.Lock()
		p := t.peers[to]
		t.mu.Unlock()
		if p == nil {
			if m.GetType() == raftpb.MessageType_MsgSnap {
				t.cfg.Handler.DiscardSnapshot(m)
				t.cfg.Handler.ReportSnapshot(to, false)
			}
			continue
		}
		p.send(m)
	}
}

// Serve accepts peer connections on l until Stop.
func (t *Transport) Serve(l net.Listener) {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		_ = l.Close()
		return
	}
	t.listeners = append(t.listeners, l)
	t.wg.Add(1)
	t.mu.Unlock()
	go func() {
		defer t.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if !t.track(c) {
				_ = c.Close()
				return
			}
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				defer t.untrack(c)
				t.serveConn(c)
			}()
		}
	}()
}

func (t *Transport) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.conns[c] = 0
	return true
}

func (t *Transport) untrack(c net.Conn) {
	_ = c.Close()
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// Stop closes every connection and listener and waits for the transport's
// goroutines.
func (t *Transport) Stop() {
	t.mu.Lock()
	t.stopped = true
	peers := t.peers
	t.peers = map[uint64]*peer{}
	for _, l := range t.listeners {
		_ = l.Close()
	}
	for c := range t.conns {
		_ = c.Close()
	}
	t.mu.Unlock()
	for _, p := range peers {
		p.stop()
	}
	t.wg.Wait()
}

// Connection kinds.
const (
	kindStream   byte = 1
	kindSnapshot byte = 2
	kindMembers  byte = 3 // a new member asks who is in the cluster
)

// Handshake answers.
const (
	acceptOK         byte = 0
	refuseCluster    byte = 1
	refuseWrongPeer  byte = 2
	refuseRemoved    byte = 3
	refuseBadVersion byte = 4
	// askHold answers a version 2 handshake's first part: the sender's
	// vote hold comes next, then the answer proper.
	askHold byte = 5
)

var magic = [4]byte{'P', 'L', 'R', 'F'}

// The handshake's versions. Version 1, of earlier builds, had no vote hold.
// A member accepts both, and speaks version 1 to a peer that refuses version
// 2, so that a cluster can be upgraded one member at a time: a peer heard
// only in version 1 has no known hold, and no leader holds a read lease while
// it votes.
const (
	protocolVersion        = 2
	protocolVersionNoHolds = 1
)

// handshake is what a connection opens with: 4 magic bytes, the protocol
// version, the connection kind, then the cluster ID and the sending and
// receiving members' IDs (8 bytes each, big endian). In version 2 the
// receiver then asks for the sender's vote hold (askHold, but to a members
// question), which follows in nanoseconds (8 bytes, big endian), before it
// answers. An earlier build reads the first part whole and refuses its
// version: the sender reads that refusal, where a second part sent at once
// could have been met with a reset of the connection.
const handshakeLen = 4 + 1 + 1 + 8 + 8 + 8

func appendHandshake(b []byte, version, kind byte, cluster, from, to uint64) []byte {
	b = append(b, magic[:]...)
	b = append(b, version, kind)
	b = binary.BigEndian.AppendUint64(b, cluster)
	b = binary.BigEndian.AppendUint64(b, from)
	return binary.BigEndian.AppendUint64(b, to)
}

// handshake opens connection c of kind to member to in version, and returns
// the peer's answer (acceptOK, or why it refused).
func handshake(c net.Conn, version, kind byte, cluster, from, to uint64, voteHold time.Duration) (byte, error) {
	if _, err := c.Write(appendHandshake(nil, version, kind, cluster, from, to)); err != nil {
		return 0, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(c, answer[:]); err != nil {
		return 0, err
	}
	if answer[0] != askHold || version == protocolVersionNoHolds {
		return answer[0], nil
	}
	if _, err := c.Write(binary.BigEndian.AppendUint64(nil, uint64(max(voteHold, 0)))); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, answer[:]); err != nil {
		return 0, err
	}
	return answer[0], nil
}

// handshakeVersions are the versions a connection tries, in turn, as long as
// the peer refuses each for its version.
var handshakeVersions = []byte{protocolVersion, protocolVersionNoHolds}

// refusal explains a handshake answer other than acceptOK.
func refusal(code byte, cluster uint64) error {
	switch code {
	case refuseCluster:
		return fmt.Errorf("peer belongs to another cluster than %x (its data dir, or --initial-cluster-token, differs)", cluster)
	case refuseWrongPeer:
		return errors.New("peer has another member ID at this address")
	case refuseRemoved:
		return ErrRemoved
	case refuseBadVersion:
		return errBadVersion
	}
	return fmt.Errorf("peer refused the connection with code %d", code)
}

// errBadVersion is a peer's refusal of the handshake's version.
var errBadVersion = errors.New("peer speaks another transport protocol version")

// ErrRemoved is the answer of a peer to a member removed from the cluster.
var ErrRemoved = errors.New("transport: this member was removed from the cluster")

func (t *Transport) serveConn(c net.Conn) {
	var hs [handshakeLen]byte
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, hs[:]); err != nil {
		return
	}
	if [4]byte(hs[:4]) != magic {
		t.cfg.Logger.Warn("refused a peer connection: not a plinth peer", "remote", c.RemoteAddr().String())
		return
	}
	version, kind := hs[4], hs[5]
	var voteHold time.Duration
	holdKnown := false
	if version == protocolVersion && kind != kindMembers {
		var hold [8]byte
		if _, err := c.Write([]byte{askHold}); err != nil {
			return
		}
		if _, err := io.ReadFull(c, hold[:]); err != nil {
			return
		}
		voteHold, holdKnown = time.Duration(min(binary.BigEndian.Uint64(hold[:]), math.MaxInt64)), true
	}
	_ = c.SetDeadline(time.Time{})
	cluster := binary.BigEndian.Uint64(hs[6:])
	from := binary.BigEndian.Uint64(hs[14:])
	to := binary.BigEndian.Uint64(hs[22:])
	answer := acceptOK
	switch {
	case version != protocolVersion && version != protocolVersionNoHolds:
		answer = refuseBadVersion
	case kind == kindMembers:
		// A member that is not in the cluster yet knows neither the
		// cluster's ID nor ours: the question needs no introduction.
		t.answerMembers(c)
		return
	case cluster != t.cfg.ClusterID:
		answer = refuseCluster
		t.cfg.Logger.Warn("refused a peer of another cluster", "remote", c.RemoteAddr().String(), "peer-cluster", fmt.Sprintf("%x", cluster), "cluster", fmt.Sprintf("%x", t.cfg.ClusterID), "peer", fmt.Sprintf("%x", from))
	case to != t.cfg.ID:
		answer = refuseWrongPeer
		t.cfg.Logger.Warn("refused a peer connection meant for another member", "remote", c.RemoteAddr().String(), "for", fmt.Sprintf("%x", to), "self", fmt.Sprintf("%x", t.cfg.ID))
	case !t.admit(c, from, voteHold, holdKnown):
		answer = refuseRemoved
	}
	if _, err := c.Write([]byte{answer}); err != nil || answer != acceptOK {
		return
	}
	r := bufio.NewReaderSize(c, 64<<10)
	switch kind {
	case kindStream:
		t.readStream(r, from)
	case kindSnapshot:
		t.readSnapshot(c, r, from)
	}
}

func (t *Transport) blocked(from, to uint64) bool {
	return t.cfg.Blocked != nil && t.cfg.Blocked(from, to)
}

// admit records that c comes from member from, and from's vote hold (or that
// it is not known), unless from was removed: under one lock, so that
// RemovePeer either closes c or admit refuses it. The hold is recorded before
// anything c carries is read: whatever from acknowledges on it, it
// acknowledges under that hold.
func (t *Transport) admit(c net.Conn, from uint64, voteHold time.Duration, holdKnown bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.removed[from] {
		return false
	}
	if _, open := t.conns[c]; open {
		t.conns[c] = from
	}
	if holdKnown {
		t.voteHolds[from] = voteHold
	} else {
		delete(t.voteHolds, from)
	}
	return true
}

// PeerVoteHold returns the vote hold member id gave in its last handshake,
// and whether it has connected since this transport started.
func (t *Transport) PeerVoteHold(id uint64) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	hold, ok := t.voteHolds[id]
	return hold, ok
}

func (t *Transport) readStream(r *bufio.Reader, from uint64) {
	var buf []byte
	received := t.metrics.receivedBytes.WithLabelValues(peerLabel(from))
	for {
		m, err := readMessage(r, &buf)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				t.cfg.Logger.Debug("peer stream ended", "peer", fmt.Sprintf("%x", from), "err", err)
			}
			return
		}
		received.Add(float64(4 + len(buf)))
		if m.GetFrom() != from && !relayed(m) {
			t.cfg.Logger.Warn("dropped a message whose sender is not the stream's peer", "peer", fmt.Sprintf("%x", from), "from", fmt.Sprintf("%x", m.GetFrom()))
			continue
		}
		if t.blocked(from, t.cfg.ID) {
			continue
		}
		if m.GetType() == raftpb.MessageType_MsgHeartbeatResp {
			if pm := t.peerMetricsOf(from); pm != nil {
				pm.heartbeatAnswered()
			}
		}
		t.cfg.Handler.Process(m)
	}
}

// relayed reports whether m is of a type Raft passes on unchanged, its sender
// still the member that first sent it: a follower hands a proposal or a read
// index request it got to the leader it knows, when the member it was meant
// for no longer leads.
func relayed(m *raftpb.Message) bool {
	switch m.GetType() {
	case raftpb.MessageType_MsgProp, raftpb.MessageType_MsgReadIndex:
		return true
	}
	return false
}

func (t *Transport) readSnapshot(c net.Conn, r *bufio.Reader, from uint64) {
	var buf []byte
	m, err := readMessage(r, &buf)
	if err != nil || m.GetType() != raftpb.MessageType_MsgSnap || m.GetFrom() != from {
		t.cfg.Logger.Warn("bad snapshot announcement", "peer", fmt.Sprintf("%x", from), "err", err)
		return
	}
	if t.blocked(from, t.cfg.ID) {
		return
	}
	if err := t.cfg.Handler.ReceiveSnapshot(r, m); err != nil {
		t.cfg.Logger.Warn("receive snapshot", "peer", fmt.Sprintf("%x", from), "index", m.GetSnapshot().GetMetadata().GetIndex(), "err", err)
		return
	}
	// The answer tells the sender the snapshot is stored.
	_, _ = c.Write([]byte{acceptOK})
}

// writeMessage frames m: its length (4 bytes, big endian), then its encoding.
func writeMessage(w *bufio.Writer, m *raftpb.Message, buf *[]byte) error {
	data, err := proto.MarshalOptions{}.MarshalAppend((*buf)[:0], m)
	if err != nil {
		return fmt.Errorf("transport: encode %v: %w", m.GetType(), err)
	}
	*buf = data
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(data)))
	if _, err := w.Write(l[:]); err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

func readMessage(r *bufio.Reader, buf *[]byte) (*raftpb.Message, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(l[:])
	if n > maxMessageSize {
		return nil, fmt.Errorf("transport: message of %d bytes exceeds %d", n, maxMessageSize)
	}
	if cap(*buf) < int(n) {
		*buf = make([]byte, n)
	}
	*buf = (*buf)[:n] // its length tells the caller the message's size
	data := *buf
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, err
	}
	m := &raftpb.Message{}
	// Unmarshal copies bytes fields, so buf can be reused.
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("transport: decode message: %w", err)
	}
	return m, nil
}

// maxMembersAnswer bounds the answer to a members question.
const maxMembersAnswer = 1 << 20

// answerMembers answers a members question: acceptOK, the cluster ID, the
// number of member records, then each record with its length.
func (t *Transport) answerMembers(c net.Conn) {
	var records [][]byte
	if t.cfg.Members != nil {
		records = t.cfg.Members()
	}
	out := []byte{acceptOK}
	out = binary.BigEndian.AppendUint64(out, t.cfg.ClusterID)
	out = binary.BigEndian.AppendUint32(out, uint32(len(records)))
	for _, r := range records {
		out = binary.BigEndian.AppendUint32(out, uint32(len(r)))
		out = append(out, r...)
	}
	_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, _ = c.Write(out)
}

// FetchMembers asks the member at addr (a peer address, host:port) for the
// cluster's ID and member records: how a member added to a running cluster
// learns its own ID and its peers.
func FetchMembers(dialer Dialer, addr string) (clusterID uint64, records [][]byte, err error) {
	if dialer == nil {
		dialer = &net.Dialer{Timeout: dialTimeout}
	}
	for _, version := range handshakeVersions {
		clusterID, records, err = fetchMembers(dialer, addr, version)
		if !errors.Is(err, errBadVersion) {
			break
		}
	}
	return clusterID, records, err
}

func fetchMembers(dialer Dialer, addr string, version byte) (clusterID uint64, records [][]byte, err error) {
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return 0, nil, fmt.Errorf("transport: ask %s for the members: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(appendHandshake(nil, version, kindMembers, 0, 0, 0)); err != nil {
		return 0, nil, fmt.Errorf("transport: ask %s for the members: %w", addr, err)
	}
	r := bufio.NewReader(io.LimitReader(c, maxMembersAnswer))
	var head [1 + 8 + 4]byte
	if _, err := io.ReadFull(r, head[:1]); err != nil {
		return 0, nil, fmt.Errorf("transport: members answer from %s: %w", addr, err)
	}
	if head[0] != acceptOK { // a refusal is the one byte
		return 0, nil, fmt.Errorf("transport: members question to %s: %w", addr, refusal(head[0], 0))
	}
	if _, err := io.ReadFull(r, head[1:]); err != nil {
		return 0, nil, fmt.Errorf("transport: members answer from %s: %w", addr, err)
	}
	clusterID = binary.BigEndian.Uint64(head[1:])
	n := binary.BigEndian.Uint32(head[9:])
	for range n {
		var l [4]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return 0, nil, fmt.Errorf("transport: members answer from %s: %w", addr, err)
		}
		rec := make([]byte, binary.BigEndian.Uint32(l[:]))
		if _, err := io.ReadFull(r, rec); err != nil {
			return 0, nil, fmt.Errorf("transport: members answer from %s: %w", addr, err)
		}
		records = append(records, rec)
	}
	return clusterID, records, nil
}
