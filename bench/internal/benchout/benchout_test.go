package benchout

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func readSample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The samples in testdata were printed by the etcd v3.6.6 benchmark tool against the
// floor server, except put-with-errors.txt, which is put-precise.txt with an error
// distribution appended in the tool's format.
func TestParseSamples(t *testing.T) {
	tests := []struct {
		file    string
		total   time.Duration
		rps     float64
		p50     time.Duration
		p99     time.Duration
		p999    time.Duration
		slowest time.Duration
		errors  int
	}{
		{
			file:    "put-precise.txt",
			total:   43843248 * time.Nanosecond,
			rps:     45617.05829823557,
			p50:     1488509 * time.Nanosecond,
			p99:     6453270 * time.Nanosecond,
			p999:    7343808 * time.Nanosecond,
			slowest: 7514732 * time.Nanosecond,
		},
		{
			file:    "range-default.txt",
			total:   54 * time.Millisecond,
			rps:     37022.1651,
			p50:     2100 * time.Microsecond,
			p99:     7 * time.Millisecond,
			p999:    7600 * time.Microsecond,
			slowest: 7700 * time.Microsecond,
		},
		{
			file:    "put-with-errors.txt",
			total:   43843248 * time.Nanosecond,
			rps:     45617.05829823557,
			p50:     1488509 * time.Nanosecond,
			p99:     6453270 * time.Nanosecond,
			p999:    7343808 * time.Nanosecond,
			slowest: 7514732 * time.Nanosecond,
			errors:  5,
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			r, err := Parse(readSample(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			near := func(what string, got, want time.Duration) {
				t.Helper()
				if d := got - want; d < -time.Microsecond || d > time.Microsecond {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}
			near("Total", r.Total, tt.total)
			near("Slowest", r.Slowest, tt.slowest)
			if r.RPS != tt.rps {
				t.Errorf("RPS = %v, want %v", r.RPS, tt.rps)
			}
			for _, p := range []struct {
				pct  float64
				want time.Duration
			}{{50, tt.p50}, {99, tt.p99}, {99.9, tt.p999}} {
				got, ok := r.P(p.pct)
				if !ok {
					t.Errorf("no p%v", p.pct)
				}
				near("p", got, p.want)
			}
			if len(r.Percentiles) != 8 {
				t.Errorf("%d percentiles, want 8: %v", len(r.Percentiles), r.Percentiles)
			}
			if got := r.ErrorCount(); got != tt.errors {
				t.Errorf("ErrorCount = %d, want %d (%v)", got, tt.errors, r.Errors)
			}
		})
	}
}

func TestParseErrorsOnly(t *testing.T) {
	r, err := Parse(readSample(t, "txn-errors.txt"))
	if !errors.Is(err, ErrNoSummary) {
		t.Fatalf("err = %v, want ErrNoSummary", err)
	}
	want := "rpc error: code = Unimplemented desc = method Txn not implemented"
	if r.Errors[want] != 20 || r.ErrorCount() != 20 {
		t.Fatalf("Errors = %v, want 20 of %q", r.Errors, want)
	}
}

func TestParseProgressBarAndEmpty(t *testing.T) {
	// A progress bar redrawn with carriage returns before the report begins.
	out := " 10 / 20 [===>    ] 50.00%\r 20 / 20 [========] 100.00% 0s\n" +
		"\nSummary:\n  Total:\t1.5 secs.\n  Requests/sec:\t13.5\n" +
		"\nLatency distribution:\n  99% in 0.25 secs.\n"
	r, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 13.5 || r.Total != 1500*time.Millisecond {
		t.Fatalf("RPS %v Total %v", r.RPS, r.Total)
	}
	if p, _ := r.P(99); p != 250*time.Millisecond {
		t.Fatalf("p99 = %v", p)
	}
	if _, err := Parse(""); !errors.Is(err, ErrNoSummary) {
		t.Fatalf("empty output: err = %v, want ErrNoSummary", err)
	}
}

func TestParseMalformed(t *testing.T) {
	for name, out := range map[string]string{
		"bad rps":        "Summary:\n  Requests/sec:\tfast\n",
		"bad percentile": "Summary:\n  Requests/sec:\t1\nLatency distribution:\n  99% in soon.\n",
		"bad error line": "Error distribution:\n  3 things\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(out); err == nil || errors.Is(err, ErrNoSummary) {
				t.Fatalf("err = %v, want a parse error", err)
			}
		})
	}
}

// watch-latency.txt was printed by the etcd v3.6.6 tool's watch-latency load
// against plinth: a put summary, then the watch events' summary, which is the
// one kept (the put summary's 10% and 25% must not leak into it).
func TestParseKeepsTheLastSummary(t *testing.T) {
	r, err := Parse(readSample(t, "watch-latency.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 1293.5514101472834 || r.Slowest != 1774923*time.Nanosecond {
		t.Fatalf("rps %v, slowest %v: not the watch events' summary", r.RPS, r.Slowest)
	}
	if p, ok := r.P(95); !ok || p != 1773671*time.Nanosecond {
		t.Fatalf("p95 %v, %v", p, ok)
	}
	if p, ok := r.P(10); ok {
		t.Fatalf("p10 %v from the put summary", p)
	}
}
