package transport

import (
	"net"
	"syscall"
	"time"
)

// tcpRTOMaxMS is TCP_RTO_MAX_MS of linux/tcp.h (Linux 6.15 and later).
const tcpRTOMaxMS = 44

// maxRetransmitGap bounds how long a raft stream waits between
// retransmissions of what its peer has not acknowledged.
const maxRetransmitGap = time.Second

// boundRetransmits caps the kernel's retransmission timeout on a raft stream's
// connection at maxRetransmitGap (Linux's default cap is two minutes). A
// stream whose packets were lost for a few seconds (a partition: the peer's
// firewall dropping them) otherwise backs off exponentially, and stays
// silent after the partition heals until its next retransmission, seconds
// later: a member cut off for three seconds heard nothing from the new
// leader for three more, and reads through it timed out. Capped, the stream
// resumes within a second of the heal. Only the writing end needs it: the
// accepting end of a stream sends nothing after the handshake. On kernels
// without the option it does nothing.
func boundRetransmits(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return // tests' fault-injecting connections
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpRTOMaxMS, int(maxRetransmitGap.Milliseconds()))
	})
}
