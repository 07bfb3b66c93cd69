package idlemem

import (
	"context"
	"sync"
	"testing"
	"time"
)

var testConfig = Config{
	Interval:            20 * time.Millisecond,
	QuietBytesPerSecond: 4 << 20,
	QuietIntervals:      5,
	MinBurstBytes:       8 << 20,
}

// sink keeps the compiler from dropping the allocations of allocate.
var sink []byte

// allocate makes n bytes of garbage in 4 KiB pieces.
func allocate(n int) {
	for range n / 4096 {
		sink = make([]byte, 4096)
	}
}

// runTrimmer starts Run and returns a channel that gets each trim, and a
// function that stops Run and waits for it.
func runTrimmer(t *testing.T, cfg Config) (<-chan uint64, func()) {
	t.Helper()
	trims := make(chan uint64, 100)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		Run(ctx, cfg, func(released uint64) { trims <- released })
	}()
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return trims, stop
}

func TestTrimsOnceAfterABurst(t *testing.T) {
	trims, _ := runTrimmer(t, testConfig)
	allocate(64 << 20)
	select {
	case released := <-trims:
		if released == 0 {
			t.Fatalf("a trim after 64 MiB of garbage released nothing")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no trim within 5s of the end of a 64 MiB burst")
	}
	// Quiet with no new burst: no second trim.
	select {
	case released := <-trims:
		t.Fatalf("a second trim (%d bytes) with no burst since the first", released)
	case <-time.After(20 * testConfig.Interval):
	}
}

func TestNoTrimUnderLoad(t *testing.T) {
	trims, _ := runTrimmer(t, testConfig)
	// Well above the quiet rate (4 MiB/s) for 30 intervals: 1 MiB every
	// 5 ms is ~200 MiB/s.
	deadline := time.Now().Add(30 * testConfig.Interval)
	for time.Now().Before(deadline) {
		allocate(1 << 20)
		select {
		case <-trims:
			t.Fatal("trimmed while the allocation rate was far above the quiet rate")
		case <-time.After(5 * time.Millisecond):
		}
	}
	// Once the load stops, the burst it was gets its trim.
	select {
	case <-trims:
	case <-time.After(5 * time.Second):
		t.Fatal("no trim within 5s of the end of the load")
	}
}

func TestNoTrimWithoutABurst(t *testing.T) {
	trims, _ := runTrimmer(t, Config{
		Interval:            testConfig.Interval,
		QuietBytesPerSecond: testConfig.QuietBytesPerSecond,
		QuietIntervals:      testConfig.QuietIntervals,
		MinBurstBytes:       1 << 40,
	})
	allocate(16 << 20)
	select {
	case <-trims:
		t.Fatal("trimmed after 16 MiB of allocation with a 1 TiB burst threshold")
	case <-time.After(20 * testConfig.Interval):
	}
}

func TestStopsWhenContextEnds(t *testing.T) {
	_, stop := runTrimmer(t, testConfig)
	done := make(chan struct{})
	go func() { stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of its context's end")
	}
}
