package compat

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEtcdctlLockElect runs etcdctl lock and elect (v3.7.3; they use the
// client's Mutex and Election recipes over KV, Lease and Watch) against the
// reference etcd and plinth through the same scenario: a lock held until
// interrupted, a second lock that runs a command once the first is released,
// a listener that sees each new leader, and two candidates, the second
// elected when the first is interrupted. Each server's transcript (what each
// etcdctl printed, in order, and how it exited) must be the same once lease
// IDs are replaced by a name. Then plinthctl lock and elect run the scenario
// against a fresh target, and must print what etcdctl printed against etcd.
func TestEtcdctlLockElect(t *testing.T) {
	ctl := buildEtcdctl(t)
	p := startPair(t, oneMember)
	ref := lockElectTranscript(t, ctl, p.ref)
	tgt := lockElectTranscript(t, ctl, p.tgt)
	if ref != tgt {
		t.Fatalf("etcdctl lock/elect transcripts differ:\netcd:\n%s\n%s:\n%s", ref, p.tgt.name, tgt)
	}
	t.Logf("transcript:\n%s", ref)
	if selftest {
		return
	}
	plinthctl := buildPlinthctl(t)
	fresh := startBinary(t, "plinth-for-plinthctl", targetBin)
	if own := lockElectTranscript(t, plinthctl, fresh); own != ref {
		t.Fatalf("plinthctl's lock/elect transcript differs from etcdctl's:\netcdctl against etcd:\n%s\nplinthctl against plinth:\n%s", ref, own)
	}
}

// ctlProcess is etcdctl running in the background.
type ctlProcess struct {
	cmd         *exec.Cmd
	out, errOut lockedText
	done        chan struct{}
}

func startCtlProcess(t *testing.T, ctl string, s *server, args ...string) *ctlProcess {
	t.Helper()
	p := &ctlProcess{done: make(chan struct{})}
	p.cmd = exec.Command(ctl, append([]string{"--endpoints", s.addr}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errOut
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("compat: start etcdctl: %v", err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// waitOut waits up to 20s for the output to match re.
func (p *ctlProcess) waitOut(t *testing.T, what string, re *regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !re.MatchString(p.out.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("compat: %s: output %q never matched %s (stderr %q)", what, p.out.String(), re, p.errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// quiet reports the output after a moment in which the process should
// print nothing new.
func (p *ctlProcess) quiet() string {
	time.Sleep(500 * time.Millisecond)
	return p.out.String()
}

// interrupt sends SIGINT and returns how the process ended.
func (p *ctlProcess) interrupt(t *testing.T) string {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	return p.exit(t)
}

// exit waits for the process to end and describes its end.
func (p *ctlProcess) exit(t *testing.T) string {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("compat: etcdctl %v did not end", p.cmd.Args)
	}
	return fmt.Sprintf("exit %d, stderr %q", p.cmd.ProcessState.ExitCode(), p.errOut.String())
}

var leaseHexRE = regexp.MustCompile(`(lk|el)/[0-9a-f]+`)

func lockElectTranscript(t *testing.T, ctl string, s *server) string {
	var log []string
	note := func(format string, a ...any) { log = append(log, fmt.Sprintf(format, a...)) }

	holder := startCtlProcess(t, ctl, s, "lock", "lk")
	holder.waitOut(t, "lock", regexp.MustCompile(`^lk/[0-9a-f]+\n\n$`))
	note("holder printed %q", holder.out.String())
	waiter := startCtlProcess(t, ctl, s, "lock", "lk", "--", "sh", "-c", `echo "ran with $ETCD_LOCK_KEY at $ETCD_LOCK_REV"`)
	note("waiter printed %q while the holder held the lock", waiter.quiet())
	note("holder interrupted: %s", holder.interrupt(t))
	waiter.waitOut(t, "lock with a command", regexp.MustCompile(`ran with`))
	note("waiter: %s, printed %q", waiter.exit(t), waiter.out.String())
	failing := startCtlProcess(t, ctl, s, "lock", "lk", "--", "sh", "-c", "exit 3")
	note("failing command: %s", failing.exit(t))

	listener := startCtlProcess(t, ctl, s, "elect", "-l", "el")
	one := startCtlProcess(t, ctl, s, "elect", "el", "one")
	one.waitOut(t, "campaign one", regexp.MustCompile(`^el/[0-9a-f]+\none\n$`))
	note("one printed %q", one.out.String())
	listener.waitOut(t, "listener", regexp.MustCompile(`one\n$`))
	two := startCtlProcess(t, ctl, s, "elect", "el", "two")
	note("two printed %q while one led", two.quiet())
	note("one interrupted: %s", one.interrupt(t))
	two.waitOut(t, "campaign two", regexp.MustCompile(`^el/[0-9a-f]+\ntwo\n$`))
	note("two printed %q", two.out.String())
	listener.waitOut(t, "listener", regexp.MustCompile(`two\n$`))
	note("two interrupted: %s", two.interrupt(t))
	note("listener printed %q", listener.quiet())
	note("listener interrupted: %s", listener.interrupt(t))

	return leaseHexRE.ReplaceAllString(strings.Join(log, "\n"), "$1/LEASE")
}
