package transport

import (
	"net"
	"syscall"
	"testing"
)

// The cap on retransmission gaps reaches the socket, on kernels that have
// the option (Linux 6.15 and later).
func TestBoundRetransmits(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	get := func() (v int, err error) {
		cerr := raw.Control(func(fd uintptr) { v, err = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpRTOMaxMS) })
		if cerr != nil {
			return 0, cerr
		}
		return v, err
	}
	if _, err := get(); err != nil {
		t.Skipf("this kernel has no TCP_RTO_MAX_MS: %v", err)
	}
	boundRetransmits(c)
	if v, err := get(); err != nil || v != int(maxRetransmitGap.Milliseconds()) {
		t.Fatalf("TCP_RTO_MAX_MS after boundRetransmits: %d, %v; want %d", v, err, maxRetransmitGap.Milliseconds())
	}
}
