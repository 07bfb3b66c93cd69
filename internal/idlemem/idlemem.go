// Package idlemem gives memory back to the operating system when a member
// goes quiet after a burst of work.
//
// Go's garbage collector sizes the heap for the load it last saw: after a
// burst (a client creating a hundred thousand watchers, a bulk load, a
// snapshot sent to a peer) the heap keeps the burst's garbage until the next
// cycle, which an idle member may not reach for minutes, and the scavenger
// keeps the heap's goal resident (up to five times the live heap at
// plinth's GOGC, see internal/gcpercent). A control-plane store is idle most
// of the time, so that is the memory it is seen to use. Run notices the
// quiet after a burst (little allocation for a few seconds) and then
// collects and returns the free pages once, as the JVM's periodic collection
// of an idle heap does. Under load it never acts: allocation is then far
// above the quiet rate.
package idlemem

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Config says when a member counts as quiet and when trimming is worth it.
type Config struct {
	// Interval is how often allocation is sampled.
	Interval time.Duration
	// QuietBytesPerSecond is the allocation rate below which an interval
	// counts as quiet.
	QuietBytesPerSecond uint64
	// QuietIntervals is how many quiet intervals in a row make the member
	// quiet.
	QuietIntervals int
	// MinBurstBytes is the least allocation since the last trim that makes
	// another one worth it; the live heap, when larger, takes its place,
	// so that trims add at most one collection per natural cycle of the
	// collector however large the heap.
	MinBurstBytes uint64
}

// DefaultConfig trims about two seconds after a burst of at least 4 MiB
// of allocation ends.
var DefaultConfig = Config{
	Interval:            time.Second,
	QuietBytesPerSecond: 1 << 20,
	QuietIntervals:      2,
	MinBurstBytes:       4 << 20,
}

const (
	metricAllocs   = "/gc/heap/allocs:bytes"
	metricLive     = "/gc/heap/live:bytes"
	metricReleased = "/memory/classes/heap/released:bytes"
)

// Run samples allocation every cfg.Interval and trims the heap when the
// member has been quiet for cfg.QuietIntervals after a burst. onTrim, when
// not nil, is told after each trim how much memory the heap returned. Run
// returns when ctx ends.
func Run(ctx context.Context, cfg Config, onTrim func(released uint64)) {
	samples := []metrics.Sample{{Name: metricAllocs}, {Name: metricLive}, {Name: metricReleased}}
	read := func() (allocs, live, released uint64) {
		metrics.Read(samples)
		return samples[0].Value.Uint64(), samples[1].Value.Uint64(), samples[2].Value.Uint64()
	}
	quietLimit := cfg.QuietBytesPerSecond * uint64(cfg.Interval) / uint64(time.Second)
	ticker := time.NewTicker(cfg.Interval)
	defer ticker.Stop()
	lastAllocs, _, _ := read()
	trimmedAt := lastAllocs
	quiet := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		allocs, live, releasedBefore := read()
		if allocs-lastAllocs < quietLimit {
			quiet++
		} else {
			quiet = 0
		}
		lastAllocs = allocs
		if quiet < cfg.QuietIntervals || allocs-trimmedAt < max(cfg.MinBurstBytes, live) {
			continue
		}
		// The first collection empties the sync.Pools into their victim
		// caches, the second frees those, and FreeOSMemory returns the
		// pages.
		runtime.GC()
		debug.FreeOSMemory()
		var releasedAfter uint64
		trimmedAt, _, releasedAfter = read()
		lastAllocs = trimmedAt
		if onTrim != nil && releasedAfter > releasedBefore {
			onTrim(releasedAfter - releasedBefore)
		}
	}
}
