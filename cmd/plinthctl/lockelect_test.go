package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
)

// backgroundRun is plinthctl running in-process until interrupted (its
// context canceled), as lock and elect do.
type backgroundRun struct {
	out, errOut lockedBuffer
	cancel      context.CancelFunc
	done        chan int
}

// startCtl starts plinthctl with args against ep.
func startCtl(ep string, args ...string) *backgroundRun {
	ctx, cancel := context.WithCancel(context.Background())
	b := &backgroundRun{cancel: cancel, done: make(chan int, 1)}
	go func() {
		b.done <- run(ctx, append([]string{"--endpoints", ep}, args...), strings.NewReader(""), &b.out, &b.errOut)
	}()
	return b
}

// waitOut waits until the output matches re.
func (b *backgroundRun) waitOut(t *testing.T, what string, re *regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !re.MatchString(b.out.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: output %q never matched %s (stderr %q)", what, b.out.String(), re, b.errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop interrupts the run and returns its exit code.
func (b *backgroundRun) stop(t *testing.T) int {
	t.Helper()
	b.cancel()
	select {
	case code := <-b.done:
		return code
	case <-time.After(20 * time.Second):
		t.Fatal("plinthctl did not stop when interrupted")
		return -1
	}
}

func TestLockCommand(t *testing.T) {
	ep := testServer(t)

	holder := startCtl(ep, "lock", "lk")
	holder.waitOut(t, "lock", regexp.MustCompile(`^lk/[0-9a-f]+\n\n$`))
	key := strings.TrimSpace(holder.out.String())

	// A second lock runs its command once the first is released, with the
	// lock's key and revision in its environment.
	waiter := startCtl(ep, "lock", "lk", "--", "sh", "-c", `echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV"`)
	time.Sleep(300 * time.Millisecond)
	if out := waiter.out.String(); out != "" {
		t.Fatalf("the second lock ran while the first held it: %q", out)
	}
	if code := holder.stop(t); code != 0 || holder.errOut.String() != "" {
		t.Fatalf("lock holder: exit %d, stderr %q", code, holder.errOut.String())
	}
	if got := ok(t, ep, "", "get", key); got != "" {
		t.Fatalf("the released lock's key is still there: %q", got)
	}
	waiter.waitOut(t, "lock with a command", regexp.MustCompile(`^lk/[0-9a-f]+ [0-9]+\n$`))
	select {
	case code := <-waiter.done:
		if code != 0 {
			t.Fatalf("lock with a command: exit %d, stderr %q", code, waiter.errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("lock with a command did not end")
	}
	// The command ran under the lock: its revision is the key's creation.
	fields := strings.Fields(waiter.out.String())
	if got := ok(t, ep, "", "get", "lk", "--prefix"); got != "" {
		t.Fatalf("lock keys left after the command: %q", got)
	}
	if fields[0] == key {
		t.Fatalf("the second lock reused the first one's key %q", key)
	}

	// The command's exit code is plinthctl's.
	wantFail(t, ep, 3, "Error: exit status 3", "lock", "lk", "--", "sh", "-c", "exit 3")
	wantFail(t, ep, exitBadArgs, "lock takes a lock name argument", "lock")
}

func TestElectCommand(t *testing.T) {
	ep := testServer(t)

	listener := startCtl(ep, "elect", "-l", "el")
	first := startCtl(ep, "elect", "el", "one")
	first.waitOut(t, "campaign one", regexp.MustCompile(`^el/[0-9a-f]+\none\n$`))
	listener.waitOut(t, "listen", regexp.MustCompile(`^el/[0-9a-f]+\none\n$`))

	second := startCtl(ep, "elect", "el", "two")
	time.Sleep(300 * time.Millisecond)
	if out := second.out.String(); out != "" {
		t.Fatalf("the second candidate was elected while the first led: %q", out)
	}
	if code := first.stop(t); code != 0 || first.errOut.String() != "" {
		t.Fatalf("first candidate: exit %d, stderr %q", code, first.errOut.String())
	}
	second.waitOut(t, "campaign two", regexp.MustCompile(`^el/[0-9a-f]+\ntwo\n$`))
	listener.waitOut(t, "listen", regexp.MustCompile(`^el/[0-9a-f]+\none\nel/[0-9a-f]+\ntwo\n$`))
	if code := second.stop(t); code != 0 {
		t.Fatalf("second candidate: exit %d, stderr %q", code, second.errOut.String())
	}
	if code := listener.stop(t); code != 0 || listener.errOut.String() != "" {
		t.Fatalf("listener: exit %d, stderr %q", code, listener.errOut.String())
	}

	wantFail(t, ep, exitBadArgs, "no proposal argument but -l not set", "elect", "el")
	wantFail(t, ep, exitBadArgs, "proposal given but -l is set", "elect", "-l", "el", "x")
	wantFail(t, ep, exitBadArgs, "elect takes one election name argument", "elect")
}
