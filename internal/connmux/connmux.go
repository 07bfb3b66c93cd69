// Package connmux lets one TCP listener serve gRPC and plain HTTP, as etcd
// serves its API and /metrics, /health on the same client port. It reads the
// first bytes of each accepted connection: a connection that opens with the
// HTTP/2 client preface goes to the gRPC listener, any other to the HTTP one.
//
// The sniff runs in a goroutine per connection, under a read deadline, so a
// client that connects and sends nothing delays no one else and is dropped
// when the deadline passes. Once sniffed, a connection is handed over
// untouched but for the bytes already read, which it replays first: gRPC keeps
// serving from its own Serve loop, not through net/http.
//
// connmux never parses a request beyond the preface, and never holds a
// connection after handing it over.
package connmux

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"time"
)

// http2Preface is what every HTTP/2 client, gRPC's included, sends first
// (RFC 9113, section 3.4). Its first 14 bytes cannot open an HTTP/1 request.
var http2Preface = []byte("PRI * HTTP/2.0")

// DefaultSniffTimeout is how long a new connection gets to send its first
// bytes.
const DefaultSniffTimeout = 10 * time.Second

// Mux splits one listener in two. Serve accepts; GRPC and HTTP are the
// listeners to give to grpc.Server.Serve and http.Server.Serve.
type Mux struct {
	root         net.Listener
	sniffTimeout time.Duration
	grpc, http   *subListener

	closeOnce sync.Once
	done      chan struct{} // closed by Close
	wg        sync.WaitGroup

	// mu guards sniffing, the connections not yet handed over, which
	// Close closes. Never held across I/O.
	mu       sync.Mutex
	sniffing map[net.Conn]struct{}
}

// New returns a Mux over l. A sniffTimeout of 0 means DefaultSniffTimeout.
func New(l net.Listener, sniffTimeout time.Duration) *Mux {
	if sniffTimeout <= 0 {
		sniffTimeout = DefaultSniffTimeout
	}
	m := &Mux{root: l, sniffTimeout: sniffTimeout, done: make(chan struct{}), sniffing: make(map[net.Conn]struct{})}
	m.grpc = newSubListener(m)
	m.http = newSubListener(m)
	return m
}

// GRPC is the listener of the connections that speak HTTP/2.
func (m *Mux) GRPC() net.Listener { return m.grpc }

// HTTP is the listener of every other connection.
func (m *Mux) HTTP() net.Listener { return m.http }

// Serve accepts connections until Close, or until the root listener fails,
// and returns why it stopped (nil after Close).
func (m *Mux) Serve() error {
	var delay time.Duration
	for {
		c, err := m.root.Accept()
		if err != nil {
			select {
			case <-m.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors and the like: back off, as
				// net/http does, instead of spinning.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			m.Close()
			return err
		}
		delay = 0
		m.mu.Lock()
		closing := m.sniffing == nil
		if !closing {
			m.sniffing[c] = struct{}{}
			m.wg.Add(1)
		}
		m.mu.Unlock()
		if closing {
			_ = c.Close()
			return nil
		}
		go m.route(c)
	}
}

// route sniffs c and hands it to its listener.
func (m *Mux) route(c net.Conn) {
	defer m.wg.Done()
	buf := make([]byte, len(http2Preface))
	n, isGRPC, err := sniff(c, buf, m.sniffTimeout)
	m.mu.Lock()
	if m.sniffing == nil {
		err = net.ErrClosed // Close closed c
	} else {
		delete(m.sniffing, c)
	}
	m.mu.Unlock()
	if err != nil {
		_ = c.Close() // silent, or gone before it said anything
		return
	}
	pc := &prefixConn{Conn: c, prefix: buf[:n]}
	to := m.http
	if isGRPC {
		to = m.grpc
	}
	select {
	case to.conns <- pc:
	case <-to.closed:
		_ = c.Close()
	case <-m.done:
		_ = c.Close()
	}
}

// sniff reads into buf until the bytes read either differ from the preface
// or match all of it.
func sniff(c net.Conn, buf []byte, timeout time.Duration) (n int, isGRPC bool, err error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return 0, false, err
	}
	for n < len(buf) {
		k, err := c.Read(buf[n:])
		n += k
		if !bytes.Equal(buf[:n], http2Preface[:n]) {
			break
		}
		if err != nil {
			return n, false, err
		}
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return n, false, err
	}
	return n, bytes.Equal(buf[:n], http2Preface), nil
}

// Close stops accepting, closes the root listener and both sub-listeners, and
// closes the connections not yet handed over. Connections already handed over
// belong to their servers.
func (m *Mux) Close() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.done)
		err = m.root.Close()
		m.mu.Lock()
		for c := range m.sniffing {
			_ = c.Close()
		}
		m.sniffing = nil
		m.mu.Unlock()
		m.wg.Wait()
	})
	return err
}

// subListener is one side of a Mux.
type subListener struct {
	m         *Mux
	conns     chan net.Conn
	closeOnce sync.Once
	closed    chan struct{}
}

func newSubListener(m *Mux) *subListener {
	return &subListener{m: m, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.m.done:
		return nil, net.ErrClosed
	}
}

// Close stops this side only: connections of its protocol are closed once
// sniffed, while the other side goes on. Mux.Close closes the port.
func (l *subListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *subListener) Addr() net.Addr { return l.m.root.Addr() }

// prefixConn replays the sniffed bytes before reading on.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
