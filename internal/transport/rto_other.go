//go:build !linux

package transport

import "net"

// boundRetransmits does nothing where TCP_RTO_MAX_MS is not known (see
// rto_linux.go).
func boundRetransmits(net.Conn) {}
