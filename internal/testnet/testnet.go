// Package testnet gives tests a network of their own to partition: n hosts,
// each a Linux network namespace with one IP on a bridge, reachable from the
// test process, and faults that cut hosts off from each other.
//
// The layout, for a network with subnet 198.18.S.0/24:
//
//	root namespace (the test process)       switch namespace "<prefix>-sw"
//	  pl<id> 198.18.S.1/24  <-- veth -->   test ─┐
//	                                                br0 (bridge)
//	host namespace "<prefix>-h0"                 │
//	  eth0 198.18.S.10/24   <-- veth -->      m0 ─┤
//	host namespace "<prefix>-h1"                 │
//	  eth0 198.18.S.11/24   <-- veth -->      m1 ─┘
//
// The bridge lives in a namespace of its own, so that the root namespace's
// firewall (a FORWARD policy of DROP, as Docker sets it, applies to bridged
// frames when br_netfilter is loaded) never sees the hosts' traffic, and
// nothing of the root namespace is changed but one veth with one address.
// The test process reaches every host's IP through that veth.
//
// Faults are iptables DROP rules in the hosts' own namespaces: packets
// vanish, as on a cut cable, rather than fail fast. Traffic between a host
// and the test process is never dropped, so a test can still ask a cut-off
// member what it thinks.
//
// The subnet is 198.18.0.0/15 (RFC 2544's range for benchmark networks,
// routed nowhere), one /24 per network, picked under a lock file so that
// suites running side by side get different ones. Everything a Network
// creates is removed when its test ends, whether or not it failed; networks
// left behind by a test process that died (a timeout panic runs no cleanup)
// are removed by the next New.
//
// It needs root and a kernel with network namespaces: New skips the test
// with the reason otherwise, and Open returns it.
package testnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// namePrefix starts the name of every namespace testnet creates; the
// creating process's pid follows, so that leftovers of a dead process can
// be told from another live suite's.
const namePrefix = "plinthnet"

// Network is a set of hosts on one bridge, and the test process beside them.
// Its methods are used by one goroutine at a time.
type Network struct {
	t      testing.TB
	prefix string // namespace names: prefix-sw, prefix-h<i>
	rootIf string // the veth of the root namespace
	subnet int    // S in 198.18.S.0/24 (S > 255 means 198.19.S-256)
	hosts  int
	// cut[i] lists the hosts whose traffic host i drops now.
	cut []map[int]bool
}

// ErrUnavailable is returned by Open, wrapped with the reason, when this
// process cannot create network namespaces: it is not root, or a command or
// the kernel's support is missing.
var ErrUnavailable = errors.New("testnet: network namespaces unavailable")

// New creates a network of n hosts for the test, removed when it ends. It
// skips the test when the process is not root or namespaces cannot be made.
func New(t testing.TB, n int) *Network {
	t.Helper()
	nw, err := Open(t, n)
	if err != nil {
		t.Skip(err)
	}
	return nw
}

// Open creates a network of n hosts for the test, removed when it ends, as
// New does; where namespaces cannot be made it returns an error that wraps
// ErrUnavailable instead of skipping, so that a test can run without
// partitions. Other failures fail the test.
func Open(t testing.TB, n int) (*Network, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: needs root", ErrUnavailable)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("%w: no ip command (iproute2)", ErrUnavailable)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, fmt.Errorf("%w: no iptables command", ErrUnavailable)
	}
	removeStale(t)

	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "plinth-testnet.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("testnet: %v", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("testnet: lock: %v", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	subnet, err := freeSubnet()
	if err != nil {
		t.Fatalf("testnet: %v", err)
	}
	id := rand.Uint32() & 0xffffff
	nw := &Network{
		t:      t,
		prefix: fmt.Sprintf("%s-%d-%06x", namePrefix, os.Getpid(), id),
		rootIf: fmt.Sprintf("pl%06x", id),
		subnet: subnet,
		hosts:  n,
		cut:    make([]map[int]bool, n),
	}
	for i := range nw.cut {
		nw.cut[i] = map[int]bool{}
	}
	t.Cleanup(nw.remove)

	sw := nw.prefix + "-sw"
	if err := ip("netns", "add", sw); err != nil {
		return nil, fmt.Errorf("%w: cannot create a network namespace: %v", ErrUnavailable, err)
	}
	steps := [][]string{
		{"-n", sw, "link", "set", "lo", "up"},
		{"-n", sw, "link", "add", "br0", "type", "bridge"},
		{"-n", sw, "link", "set", "br0", "up"},
		{"link", "add", nw.rootIf, "type", "veth", "peer", "name", "test", "netns", sw},
		{"-n", sw, "link", "set", "test", "master", "br0", "up"},
		{"addr", "add", nw.addr(1) + "/24", "dev", nw.rootIf},
		{"link", "set", nw.rootIf, "up"},
	}
	for i := range n {
		ns := nw.Netns(i)
		m := fmt.Sprintf("m%d", i)
		steps = append(steps,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", sw, "link", "add", m, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", sw, "link", "set", m, "master", "br0", "up"},
			[]string{"-n", ns, "addr", "add", nw.IP(i) + "/24", "dev", "eth0"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			t.Fatalf("testnet: %v", err)
		}
	}
	return nw, nil
}

// freeSubnet picks a /24 of 198.18.0.0/15 that no interface of the root
// namespace has an address in. The caller holds the lock file.
func freeSubnet() (int, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, err
	}
	used := map[int]bool{}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if v4 := ipn.IP.To4(); v4 != nil && v4[0] == 198 && (v4[1] == 18 || v4[1] == 19) {
				used[int(v4[1]-18)*256+int(v4[2])] = true
			}
		}
	}
	for range 1000 {
		if s := 1 + rand.IntN(510); !used[s] {
			return s, nil
		}
	}
	return 0, errors.New("no free /24 in 198.18.0.0/15")
}

func (nw *Network) addr(host int) string {
	return fmt.Sprintf("198.%d.%d.%d", 18+nw.subnet/256, nw.subnet%256, host)
}

// Hosts is the number of hosts.
func (nw *Network) Hosts() int { return nw.hosts }

// IP is host i's address; the test process reaches it.
func (nw *Network) IP(i int) string { return nw.addr(10 + i) }

// Netns is the name of host i's network namespace: run a process in it with
// `ip netns exec NAME cmd...`.
func (nw *Network) Netns(i int) string { return fmt.Sprintf("%s-h%d", nw.prefix, i) }

// Isolate cuts host i off from every other host, both ways; the test process
// still reaches it.
func (nw *Network) Isolate(i int) error {
	var others []int
	for j := range nw.hosts {
		if j != i {
			others = append(others, j)
		}
	}
	return nw.Cut(i, others...)
}

// Cut drops all traffic between host i and each of the hosts others, both
// ways (each side drops what comes from the other and what goes to it).
func (nw *Network) Cut(i int, others ...int) error {
	for _, j := range others {
		if j == i || nw.cut[i][j] {
			continue
		}
		for _, pair := range [][2]int{{i, j}, {j, i}} {
			a, b := pair[0], pair[1]
			for _, rule := range [][]string{
				{"-A", "INPUT", "-s", nw.IP(b), "-j", "DROP"},
				{"-A", "OUTPUT", "-d", nw.IP(b), "-j", "DROP"},
			} {
				if err := nw.iptables(a, rule...); err != nil {
					return err
				}
			}
			nw.cut[a][b] = true
		}
	}
	return nil
}

// Heal removes every cut: all hosts reach each other again.
func (nw *Network) Heal() error {
	var errs []error
	for i := range nw.hosts {
		if len(nw.cut[i]) == 0 {
			continue
		}
		for _, chain := range []string{"INPUT", "OUTPUT"} {
			errs = append(errs, nw.iptables(i, "-F", chain))
		}
		clear(nw.cut[i])
	}
	return errors.Join(errs...)
}

// Isolated reports whether host i drops the traffic of some other host.
func (nw *Network) Isolated(i int) bool { return len(nw.cut[i]) > 0 }

func (nw *Network) iptables(host int, args ...string) error {
	cmd := append([]string{"netns", "exec", nw.Netns(host), "iptables", "-w"}, args...)
	return ip(cmd...)
}

// remove deletes the network's namespaces (with them its veths and bridge).
// Processes still in a namespace keep it alive, unnamed, until they exit:
// stop them first (members' cleanups run before this one, registered later).
func (nw *Network) remove() {
	var errs []error
	for i := range nw.hosts {
		errs = append(errs, deleteNetns(nw.Netns(i)))
	}
	errs = append(errs, deleteNetns(nw.prefix+"-sw"))
	// The root veth goes with its peer in the switch namespace, but the
	// kernel may take a moment after the namespace is gone: delete it if it
	// is still there, and take "gone meanwhile" for done.
	if _, err := net.InterfaceByName(nw.rootIf); err == nil {
		if err := ip("link", "del", nw.rootIf); err != nil {
			if _, still := net.InterfaceByName(nw.rootIf); still == nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		nw.t.Errorf("testnet: remove: %v", err)
	}
}

// deleteNetns deletes a named namespace; one that does not exist is gone
// already.
func deleteNetns(name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return ip("netns", "del", name)
}

// removeStale deletes the namespaces of networks whose creating process is
// gone.
func removeStale(t testing.TB) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), namePrefix+"-")
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if err := ip("netns", "del", e.Name()); err != nil {
			t.Logf("testnet: remove stale %s: %v", e.Name(), err)
		}
	}
}

// ip runs the ip command.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, first)
	}
	return nil
}
