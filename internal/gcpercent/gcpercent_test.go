package gcpercent

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	c := Config{Max: 400, Min: 100, Budget: 512 << 20}
	for _, tc := range []struct {
		live uint64
		want int
	}{
		{0, 400},
		{40 << 20, 400},
		{128 << 20, 400},
		{256 << 20, 200},
		{384 << 20, 133},
		{512 << 20, 100},
		{4 << 30, 100},
	} {
		if got := c.For(tc.live); got != tc.want {
			t.Errorf("For(%d MiB) = %d, want %d", tc.live>>20, got, tc.want)
		}
	}
}

// TestRunFollowsTheLiveHeap: the percent is set at once, falls as the live
// heap grows past the budget's share, rises again when it shrinks, and is
// set only when it changes.
func TestRunFollowsTheLiveHeap(t *testing.T) {
	cfg := Config{Max: 400, Min: 100, Budget: 400, Interval: time.Millisecond}
	var live atomic.Uint64
	live.Store(1)
	sets := make(chan int, 100)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		run(ctx, cfg, live.Load, func(p int) { sets <- p })
	}()
	defer func() { cancel(); wg.Wait() }()

	next := func() int {
		t.Helper()
		select {
		case p := <-sets:
			return p
		case <-time.After(5 * time.Second):
			t.Fatal("no percent set")
			return 0
		}
	}
	if p := next(); p != 400 {
		t.Fatalf("first percent %d, want 400", p)
	}
	live.Store(2) // 400*100/2 = 20000: still the maximum, so nothing is set
	time.Sleep(20 * time.Millisecond)
	live.Store(200)
	if p := next(); p != 200 {
		t.Fatalf("percent at a live heap of twice the budget's share: %d, want 200", p)
	}
	live.Store(1000)
	if p := next(); p != 100 {
		t.Fatalf("percent at a live heap over the budget: %d, want 100", p)
	}
	live.Store(50)
	if p := next(); p != 400 {
		t.Fatalf("percent after the live heap shrank: %d, want 400", p)
	}
	select {
	case p := <-sets:
		t.Fatalf("percent set again to %d with nothing changed", p)
	case <-time.After(20 * time.Millisecond):
	}
}

// TestRunSetsTheRuntimesPercent: Run reads the real live heap and sets the
// runtime's percent from it.
func TestRunSetsTheRuntimesPercent(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	held := make([]byte, 64<<20)
	runtime.GC()
	cfg := Config{Max: 400, Min: 150, Budget: 1 << 20, Interval: time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Run(ctx, cfg) }()
	gogc := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	percent := func() uint64 { metrics.Read(gogc); return gogc[0].Value.Uint64() }
	deadline := time.Now().Add(5 * time.Second)
	for percent() != 150 {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("Run did not set the percent to the minimum with 64 MiB live and a 1 MiB budget")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	runtime.KeepAlive(held)
}
