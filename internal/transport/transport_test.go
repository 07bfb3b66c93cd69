package transport

import (
	"bufio"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	raftpb "go.etcd.io/raft/v3/raftpb"
)

// inbox is a Handler that keeps what it is given.
type inbox struct {
	msgs        chan *raftpb.Message
	unreachable chan uint64
}

func newInbox() *inbox {
	return &inbox{msgs: make(chan *raftpb.Message, 1024), unreachable: make(chan uint64, 1024)}
}

func (h *inbox) Process(m *raftpb.Message) { h.msgs <- m }
func (h *inbox) ReportUnreachable(id uint64) {
	select {
	case h.unreachable <- id:
	default:
	}
}
func (h *inbox) ReportSnapshot(uint64, bool)                      {}
func (h *inbox) WriteSnapshot(io.Writer, *raftpb.Message) error   { return nil }
func (h *inbox) DiscardSnapshot(*raftpb.Message)                  {}
func (h *inbox) ReceiveSnapshot(io.Reader, *raftpb.Message) error { return nil }

func startTransport(t *testing.T, cluster, id uint64) (*Transport, *inbox, string) {
	t.Helper()
	h := newInbox()
	tr := New(Config{ClusterID: cluster, ID: id, Handler: h, Logger: slog.New(slog.DiscardHandler)})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr.Serve(l)
	t.Cleanup(tr.Stop)
	return tr, h, l.Addr().String()
}

func heartbeat(from, to uint64, term uint64) *raftpb.Message {
	typ := raftpb.MessageType_MsgHeartbeat
	return &raftpb.Message{Type: &typ, From: &from, To: &to, Term: &term}
}

func TestMessagesArriveInOrder(t *testing.T) {
	a, _, _ := startTransport(t, 7, 1)
	_, hb, addrB := startTransport(t, 7, 2)
	a.AddPeer(2, []string{addrB})
	const n = 2000
	for i := range n {
		a.Send([]*raftpb.Message{heartbeat(1, 2, uint64(i))})
		if i%100 == 0 {
			time.Sleep(time.Millisecond) // let the queue drain: it is bounded
		}
	}
	var want uint64
	deadline := time.After(10 * time.Second)
	for want < n {
		select {
		case m := <-hb.msgs:
			if m.GetTerm() < want {
				t.Fatalf("message of term %d after %d", m.GetTerm(), want)
			}
			want = m.GetTerm() + 1
		case <-deadline:
			t.Fatalf("only %d of %d messages arrived", want, n)
		}
	}
}

// A peer's vote hold comes with its handshake, before anything it sends on
// that connection; a member removed takes its hold with it.
func TestAPeersVoteHoldComesWithItsHandshake(t *testing.T) {
	a := New(Config{ClusterID: 7, ID: 1, Handler: newInbox(), Logger: slog.New(slog.DiscardHandler), VoteHold: 800 * time.Millisecond})
	t.Cleanup(a.Stop)
	b, h, addrB := startTransport(t, 7, 2)
	if _, ok := b.PeerVoteHold(1); ok {
		t.Fatal("a vote hold for a member that never connected")
	}
	a.AddPeer(2, []string{addrB})
	a.Send([]*raftpb.Message{heartbeat(1, 2, 1)})
	select {
	case <-h.msgs:
	case <-time.After(10 * time.Second):
		t.Fatal("no message arrived")
	}
	if hold, ok := b.PeerVoteHold(1); !ok || hold != 800*time.Millisecond {
		t.Fatalf("member 1's vote hold: %v, %v; want 800ms", hold, ok)
	}
	b.RemovePeer(1)
	if _, ok := b.PeerVoteHold(1); ok {
		t.Fatal("a removed member's vote hold is still known")
	}
}

func TestAPeerOfAnotherClusterIsRefused(t *testing.T) {
	a, _, _ := startTransport(t, 7, 1)
	_, hb, addrB := startTransport(t, 8, 2) // same member ID, other cluster
	a.AddPeer(2, []string{addrB})
	a.Send([]*raftpb.Message{heartbeat(1, 2, 1)})
	select {
	case m := <-hb.msgs:
		t.Fatalf("a member of another cluster got %v", m)
	case <-time.After(300 * time.Millisecond):
	}
}

func TestAMessageForAnotherMemberIsRefused(t *testing.T) {
	a, _, _ := startTransport(t, 7, 1)
	_, hb, addrB := startTransport(t, 7, 3)
	a.AddPeer(2, []string{addrB}) // member 2's address, but member 3 listens there
	a.Send([]*raftpb.Message{heartbeat(1, 2, 1)})
	select {
	case m := <-hb.msgs:
		t.Fatalf("member 3 took a message for member 2: %v", m)
	case <-time.After(300 * time.Millisecond):
	}
}

func TestARemovedMemberIsToldSo(t *testing.T) {
	a, ha, _ := startTransport(t, 7, 1)
	b, _, addrB := startTransport(t, 7, 2)
	b.RemovePeer(1)
	a.AddPeer(2, []string{addrB})
	a.Send([]*raftpb.Message{heartbeat(1, 2, 1)})
	select {
	case m := <-ha.msgs:
		if !IsRemovedNotice(m) {
			t.Fatalf("got %v, want the removed notice", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the removed member was not told")
	}
}

// A member removed while its stream to a peer is open must be told too: it
// may have missed the entry that removed it, and then only its peers know.
func TestARemovedMemberWithAnOpenStreamIsToldSo(t *testing.T) {
	a, ha, _ := startTransport(t, 7, 1)
	b, hb, addrB := startTransport(t, 7, 2)
	a.AddPeer(2, []string{addrB})
	a.Send([]*raftpb.Message{heartbeat(1, 2, 1)})
	select {
	case <-hb.msgs:
	case <-time.After(5 * time.Second):
		t.Fatal("the first message did not arrive")
	}
	b.RemovePeer(1)
	deadline := time.After(5 * time.Second)
	for term := uint64(2); ; term++ {
		a.Send([]*raftpb.Message{heartbeat(1, 2, term)})
		select {
		case m := <-ha.msgs:
			if !IsRemovedNotice(m) {
				t.Fatalf("got %v, want the removed notice", m)
			}
			return
		case m := <-hb.msgs:
			t.Fatalf("the peer took %v from a member it removed", m)
		case <-deadline:
			t.Fatal("the removed member was not told")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestADeadPeerNeverBlocksSend(t *testing.T) {
	a, ha, _ := startTransport(t, 7, 1)
	a.AddPeer(2, []string{"127.0.0.1:1"}) // nothing listens there
	done := make(chan struct{})
	go func() {
		for i := range 4 * peerQueueSize {
			a.Send([]*raftpb.Message{heartbeat(1, 2, uint64(i))})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("Send blocked on a dead peer")
	}
	select {
	case id := <-ha.unreachable:
		if id != 2 {
			t.Fatalf("unreachable %d, want 2", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the dead peer was never reported unreachable")
	}
}

// Raft passes a proposal or a read index request on, its sender unchanged,
// when the member it was sent to no longer leads: those arrive from another
// member than their sender. Any other message must come from its sender.
func TestRelayedProposalsArrive(t *testing.T) {
	a, _, _ := startTransport(t, 7, 1)
	_, hb, addrB := startTransport(t, 7, 2)
	a.AddPeer(2, []string{addrB})
	from, to := uint64(3), uint64(2)
	prop, readIndex := raftpb.MessageType_MsgProp, raftpb.MessageType_MsgReadIndex
	a.Send([]*raftpb.Message{
		heartbeat(3, 2, 1), // not from member 1: dropped
		{Type: &prop, From: &from, To: &to},
		{Type: &readIndex, From: &from, To: &to},
	})
	for _, want := range []raftpb.MessageType{prop, readIndex} {
		select {
		case m := <-hb.msgs:
			if m.GetType() != want || m.GetFrom() != 3 {
				t.Fatalf("got %v, want the relayed %v from member 3", m, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the relayed %v did not arrive", want)
		}
	}
}

// earlierBuildPeer listens as a member of a build before vote holds would:
// it refuses a handshake of any version but 1, answers a members question
// with cluster and no records, and keeps the messages a stream brings.
type earlierBuildPeer struct {
	addr    string
	msgs    chan *raftpb.Message
	refused atomic.Int32
}

func startEarlierBuildPeer(t *testing.T, cluster uint64) *earlierBuildPeer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	p := &earlierBuildPeer{addr: l.Addr().String(), msgs: make(chan *raftpb.Message, 16)}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { _ = c.Close() })
			go p.serve(c, cluster)
		}
	}()
	return p
}

func (p *earlierBuildPeer) serve(c net.Conn, cluster uint64) {
	var hs [handshakeLen]byte
	if _, err := io.ReadFull(c, hs[:]); err != nil {
		return
	}
	switch {
	case hs[4] != protocolVersionNoHolds:
		p.refused.Add(1)
		_, _ = c.Write([]byte{refuseBadVersion})
		_ = c.Close()
	case hs[5] == kindMembers:
		_, _ = c.Write(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64([]byte{acceptOK}, cluster), 0))
	default:
		_, _ = c.Write([]byte{acceptOK})
		r := bufio.NewReader(c)
		var buf []byte
		for {
			m, err := readMessage(r, &buf)
			if err != nil {
				return
			}
			p.msgs <- m
		}
	}
}

// A member of an earlier build refuses the handshake's version 2: a member
// speaks version 1 to it, for its stream and for the members question.
func TestAPeerOfAnEarlierBuildIsSpokenToInItsVersion(t *testing.T) {
	old := startEarlierBuildPeer(t, 7)
	a, _, _ := startTransport(t, 7, 1)
	a.AddPeer(2, []string{old.addr})
	a.Send([]*raftpb.Message{heartbeat(1, 2, 3)})
	select {
	case m := <-old.msgs:
		if m.GetTerm() != 3 {
			t.Fatalf("got a message of term %d, want 3", m.GetTerm())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message reached the member of an earlier build")
	}
	if old.refused.Load() == 0 {
		t.Fatal("version 2 was never tried")
	}
	cluster, records, err := FetchMembers(nil, old.addr)
	if err != nil || cluster != 7 || len(records) != 0 {
		t.Fatalf("members question: cluster %x, %d records, %v; want cluster 7, none", cluster, len(records), err)
	}
}

// A member of an earlier build speaks version 1, with no vote hold: its
// messages arrive, and its hold is not known, even if a later build's
// connection of the same member told one before.
func TestAPeerOfAnEarlierBuildIsHeardWithoutAHold(t *testing.T) {
	b, hb, addrB := startTransport(t, 7, 2)
	a := New(Config{ClusterID: 7, ID: 1, Handler: newInbox(), Logger: slog.New(slog.DiscardHandler), VoteHold: time.Second})
	t.Cleanup(a.Stop)
	a.AddPeer(2, []string{addrB})
	a.Send([]*raftpb.Message{heartbeat(1, 2, 1)})
	<-hb.msgs
	if _, ok := b.PeerVoteHold(1); !ok {
		t.Fatal("the hold of a member of this build is not known")
	}
	a.Stop()

	c, err := net.Dial("tcp", addrB)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(appendHandshake(nil, protocolVersionNoHolds, kindStream, 7, 1, 2)); err != nil {
		t.Fatal(err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(c, answer[:]); err != nil || answer[0] != acceptOK {
		t.Fatalf("version 1 handshake answered %v, %v; want accepted", answer[0], err)
	}
	w := bufio.NewWriter(c)
	var buf []byte
	if err := writeMessage(w, heartbeat(1, 2, 9), &buf); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	for m := range hb.msgs {
		if m.GetTerm() == 9 {
			break
		}
	}
	if hold, ok := b.PeerVoteHold(1); ok {
		t.Fatalf("member 1's hold is %v after it spoke version 1; want unknown", hold)
	}
}
