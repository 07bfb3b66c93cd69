// Package gcpercent bounds the garbage the Go heap may hold between
// collections.
//
// plinth runs the GC at a high percent (GOGC 400: garbage up to four times
// the live heap) because its heap is mostly short-lived request garbage and
// collecting it less often saves CPU on every request. A percent scales with
// whatever is live, though: a member whose live heap grows (a hundred
// thousand watchers, a transaction of tens of megabytes) would be allowed
// four times that again before its next collection. Run reads the live heap
// as the collector last measured it and lowers the percent so that the
// allowance stays within a fixed budget, down to Go's default of 100, and
// raises it again when the live heap shrinks.
package gcpercent

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Config says how high the percent may go and within what budget.
type Config struct {
	// Max is the percent while the live heap is small.
	Max int
	// Min is the lowest percent Run sets, whatever the live heap.
	Min int
	// Budget is the garbage, in bytes, that Max may allow at most: above
	// Budget*100/Max bytes of live heap the percent falls, reaching Min at
	// Budget*100/Min.
	Budget uint64
	// Interval is how often the live heap is read.
	Interval time.Duration
}

// DefaultConfig keeps GOGC 400 up to 64 MiB of live heap and Go's 100 from
// 256 MiB on: the garbage allowed above a live heap under 256 MiB is at most
// 256 MiB. Under the benchmark's loads a member's live heap stays under 40
// MiB, so the percent stays at 400.
var DefaultConfig = Config{Max: 400, Min: 100, Budget: 256 << 20, Interval: 250 * time.Millisecond}

// For returns the percent for a live heap of live bytes.
func (c Config) For(live uint64) int {
	if live == 0 {
		return c.Max
	}
	p := c.Budget * 100 / live
	switch {
	case p >= uint64(c.Max):
		return c.Max
	case p <= uint64(c.Min):
		return c.Min
	}
	return int(p)
}

const metricLive = "/gc/heap/live:bytes"

// Run sets the GC percent to cfg.For of the live heap at once, and again
// whenever a reading every cfg.Interval gives another percent, until ctx
// ends. Run is for a
// process whose GOGC the environment leaves unset: it overrides whatever
// percent is set.
func Run(ctx context.Context, cfg Config) {
	sample := []metrics.Sample{{Name: metricLive}}
	live := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	run(ctx, cfg, live, func(p int) { debug.SetGCPercent(p) })
}

func run(ctx context.Context, cfg Config, live func() uint64, set func(int)) {
	current := cfg.For(live())
	set(current)
	ticker := time.NewTicker(cfg.Interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		if p := cfg.For(live()); p != current {
			current = p
			set(p)
		}
	}
}
