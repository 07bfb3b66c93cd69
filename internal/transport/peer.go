package transport

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	raftpb "go.etcd.io/raft/v3/raftpb"
)

// snapshotAckTimeout bounds the wait for a receiver to store a snapshot
// once all of it was written.
const snapshotAckTimeout = 2 * time.Minute

// peer sends to one member. Its stream goroutine (run) owns the connection;
// send only queues.
type peer struct {
	t  *Transport
	id uint64

	mu    sync.Mutex // guards addrs; never held across I/O
	addrs []string

	queue        chan *raftpb.Message
	stopC        chan struct{}
	stopOnce     sync.Once
	snapshotting atomic.Bool // a snapshot is on its way to the peer
	wg           sync.WaitGroup
	metrics      *peerMetrics
}

func newPeer(t *Transport, id uint64, addrs []string) *peer {
	return &peer{
		t: t, id: id, addrs: append([]string(nil), addrs...),
		queue:   make(chan *raftpb.Message, peerQueueSize),
		stopC:   make(chan struct{}),
		metrics: t.metrics.forPeer(id),
	}
}

func (p *peer) setAddrs(addrs []string) {
	p.mu.Lock()
	p.addrs = append([]string(nil), addrs...)
	p.mu.Unlock()
}

func (p *peer) stop() {
	p.stopOnce.Do(func() { close(p.stopC) })
	p.wg.Wait()
}

// send queues m, or drops it when the queue is full. It never blocks.
func (p *peer) send(m *raftpb.Message) {
	h := p.t.cfg.Handler
	if m.GetType() == raftpb.MessageType_MsgSnap {
		if !p.snapshotting.CompareAndSwap(false, true) {
			h.DiscardSnapshot(m)
			h.ReportSnapshot(p.id, false)
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.snapshotting.Store(false)
			ok := p.sendSnapshot(m)
			h.ReportSnapshot(p.id, ok)
		}()
		return
	}
	select {
	case p.queue <- m:
	default:
		p.metrics.sentFailures.Inc()
		h.ReportUnreachable(p.id)
	}
}

// run keeps a stream to the peer open and writes queued messages to it,
// until stop.
func (p *peer) run() {
	backoff := minBackoff
	var lastErr string
	for {
		conn, err := p.dial(kindStream)
		if err != nil {
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				p.t.cfg.Logger.Warn("cannot reach peer", "peer", fmt.Sprintf("%x", p.id), "err", err)
			}
			if !p.dropQueued(backoff) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		if lastErr != "" {
			p.t.cfg.Logger.Info("peer reachable again", "peer", fmt.Sprintf("%x", p.id))
		}
		lastErr, backoff = "", minBackoff
		boundRetransmits(conn)
		err = p.stream(conn)
		_ = conn.Close()
		if err == nil {
			return // stopped
		}
		p.t.cfg.Logger.Debug("peer stream broke", "peer", fmt.Sprintf("%x", p.id), "err", err)
		p.t.cfg.Handler.ReportUnreachable(p.id)
	}
}

// dropQueued waits d, dropping what is queued meanwhile: messages queued
// while the peer is unreachable are stale by the time it is back, and Raft
// resends what matters. It reports false when the peer was stopped.
func (p *peer) dropQueued(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	dropped := false
	for {
		select {
		case <-p.stopC:
			return false
		case <-timer.C:
			if dropped {
				p.t.cfg.Handler.ReportUnreachable(p.id)
			}
			return true
		case <-p.queue:
			p.metrics.sentFailures.Inc()
			dropped = true
		}
	}
}

// stream writes queued messages to conn until it fails (the error) or the
// peer stops (nil). Messages are written in batches: everything queued is
// written before one flush.
func (p *peer) stream(conn net.Conn) error {
	w := bufio.NewWriterSize(conn, 64<<10)
	var buf []byte
	for {
		var m *raftpb.Message
		select {
		case <-p.stopC:
			return nil
		case m = <-p.queue:
		}
		_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		for m != nil {
			if err := writeMessage(w, m, &buf); err != nil {
				p.metrics.sentFailures.Inc()
				return err
			}
			p.metrics.sentBytes.Add(float64(4 + len(buf)))
			if m.GetType() == raftpb.MessageType_MsgHeartbeat {
				p.metrics.heartbeatWritten()
			}
			select {
			case m = <-p.queue:
			default:
				m = nil
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
}

// dial connects to the peer for a connection of kind, trying its addresses
// in turn, and completes the handshake.
func (p *peer) dial(kind byte) (net.Conn, error) {
	p.mu.Lock()
	addrs := p.addrs
	p.mu.Unlock()
	if len(addrs) == 0 {
		return nil, errors.New("transport: no address known")
	}
	var errs []error
	for _, addr := range addrs {
		for _, version := range handshakeVersions {
			c, err := p.t.cfg.Dialer.Dial("tcp", addr)
			if err != nil {
				errs = append(errs, err)
				break
			}
			if err := p.handshake(c, version, kind); err != nil {
				_ = c.Close()
				errs = append(errs, fmt.Errorf("%s: %w", addr, err))
				if errors.Is(err, errBadVersion) {
					continue // an earlier build: its version next
				}
				break
			}
			return c, nil
		}
	}
	return nil, errors.Join(errs...)
}

func (p *peer) handshake(c net.Conn, version, kind byte) error {
	cfg := p.t.cfg
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	answer, err := handshake(c, version, kind, cfg.ClusterID, cfg.ID, p.id, cfg.VoteHold)
	if err != nil {
		return err
	}
	if answer != acceptOK {
		err := refusal(answer, cfg.ClusterID)
		if errors.Is(err, ErrRemoved) {
			cfg.Handler.Process(removedNotice(p.id, cfg.ID))
		}
		return err
	}
	return nil
}

// removedNotice is how the transport tells Raft's owner that a peer says this
// member was removed: a message of a type peers never send, from the peer.
// The Handler recognizes it with IsRemovedNotice.
func removedNotice(from, to uint64) *raftpb.Message {
	t := raftpb.MessageType_MsgUnreachable
	return &raftpb.Message{Type: &t, From: &from, To: &to, Context: []byte(removedContext)}
}

const removedContext = "plinth: removed from the cluster"

// IsRemovedNotice reports whether m is the transport's notice that a peer
// refused this member because it was removed from the cluster.
func IsRemovedNotice(m *raftpb.Message) bool {
	return m.GetType() == raftpb.MessageType_MsgUnreachable && string(m.GetContext()) == removedContext
}

func (p *peer) sendSnapshot(m *raftpb.Message) bool {
	h := p.t.cfg.Handler
	conn, err := p.dial(kindSnapshot)
	if err != nil {
		h.DiscardSnapshot(m)
		p.t.cfg.Logger.Warn("send snapshot: cannot reach peer", "peer", fmt.Sprintf("%x", p.id), "err", err)
		return false
	}
	defer conn.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		// A stopped peer aborts the transfer.
		select {
		case <-p.stopC:
			_ = conn.Close()
		case <-done:
		}
	}()
	w := bufio.NewWriterSize(conn, 256<<10)
	var buf []byte
	start := time.Now()
	err = writeMessage(w, m, &buf)
	if err == nil {
		err = h.WriteSnapshot(w, m)
	} else {
		h.DiscardSnapshot(m)
	}
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		// The image ends where the stream ends: the receiver reads to
		// EOF, then answers on the other half of the connection.
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			err = cw.CloseWrite()
		} else {
			err = errors.New("transport: the connection cannot be half-closed")
		}
	}
	if err == nil {
		_ = conn.SetReadDeadline(time.Now().Add(snapshotAckTimeout))
		var ack [1]byte
		if _, err = io.ReadFull(conn, ack[:]); err == nil && ack[0] != acceptOK {
			err = fmt.Errorf("peer answered %d", ack[0])
		}
	}
	index := m.GetSnapshot().GetMetadata().GetIndex()
	if err != nil {
		p.t.cfg.Logger.Warn("send snapshot failed", "peer", fmt.Sprintf("%x", p.id), "index", index, "err", err)
		return false
	}
	p.t.cfg.Logger.Info("sent snapshot", "peer", fmt.Sprintf("%x", p.id), "index", index, "took", time.Since(start).String())
	return true
}
