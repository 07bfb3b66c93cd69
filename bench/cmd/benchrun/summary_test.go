package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/plinthdb/plinth/bench/internal/benchout"
	"github.com/plinthdb/plinth/bench/internal/harness"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{"none", nil, 0},
		{"one", []float64{7}, 7},
		{"odd", []float64{9, 1, 5}, 5},
		{"even", []float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.in); got != tt.want {
				t.Fatalf("median(%v) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
	in := []time.Duration{3, 1, 2}
	if median(in) != 2 || in[0] != 3 {
		t.Fatalf("median must not reorder its input: %v", in)
	}
}

func result(server string, rps float64, p99 time.Duration, cpu time.Duration, requests int) harness.Result {
	return harness.Result{
		Server:    server,
		Requests:  requests,
		ServerCPU: cpu,
		Report: benchout.Report{
			RPS:         rps,
			Percentiles: map[float64]time.Duration{99: p99},
			Errors:      map[string]int{},
		},
	}
}

func TestSummaryTable(t *testing.T) {
	etcd := summarize("etcd", 3, []harness.Result{
		result("etcd", 20000, 80*time.Millisecond, 600*time.Millisecond, 10000), // 60µs/req
		result("etcd", 22000, 90*time.Millisecond, 500*time.Millisecond, 10000), // 50µs/req
		result("etcd", 21000, 70*time.Millisecond, 700*time.Millisecond, 10000), // 70µs/req
	})
	floor := summarize("floor", 2, []harness.Result{
		result("floor", 40000, 40*time.Millisecond, 200*time.Millisecond, 10000), // 20µs/req
	})
	if etcd.rps != 21000 || etcd.p99 != 80*time.Millisecond || etcd.cpu != 60*time.Microsecond {
		t.Fatalf("etcd summary %+v", etcd)
	}
	var b bytes.Buffer
	plinth := summarize("plinth", 3, nil)
	printTable(&b, "put", []summary{plinth, etcd, floor})
	out := b.String()
	for _, want := range []string{"etcd/floor", "0.53x", "2.00x", "3.00x", "60.0", "(50.0-70.0)", "(20.0-20.0)", "20.0", "3/3", "1/2", "0/3"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "plinth/") {
		t.Errorf("table has plinth ratios without plinth:\n%s", out)
	}
}

func TestMakeLoads(t *testing.T) {
	c := config{loads: "put, range-s, lease-keepalive", putTotal: 10, rangeTotal: 20, leaseTotal: 30, keySize: 8, valSize: 256, keySpace: 100}
	loads, err := makeLoads(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(loads) != 3 || loads[0].Name != "put" || loads[0].Total != 10 || loads[1].Name != "range-s" || loads[1].Total != 20 ||
		loads[2].Name != "lease-keepalive" || loads[2].Total != 30 || strings.Join(loads[2].Args, " ") != "lease-keepalive" {
		t.Fatalf("loads %+v", loads)
	}
	for _, bad := range []string{"watch", "lease-keepalive:10"} {
		if _, err := makeLoads(config{loads: bad}); err == nil {
			t.Fatalf("load %q accepted", bad)
		}
	}
}

func TestMakeLoadsKeySpaces(t *testing.T) {
	c := config{loads: "put-rand,put-rand:10k,txn-put:500", putTotal: 60000, rangeTotal: 20,
		keySize: 8, valSize: 256, keySpace: 100000, sequential: true, txnOps: 2}
	loads, err := makeLoads(c)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"put-rand put --key-size=8 --val-size=256 --key-space-size=100000",
		"put-rand:10k put --key-size=8 --val-size=256 --key-space-size=10000",
		"txn-put:500 txn-put --key-size=8 --val-size=256 --key-space-size=500 --txn-ops=2",
	}
	for i, l := range loads {
		if got := l.Name + " " + strings.Join(l.Args, " "); got != want[i] || l.Total != 60000 {
			t.Errorf("load %d = %q (total %d), want %q", i, got, l.Total, want[i])
		}
	}
	for _, bad := range []string{"put:x", "put-rand:0", "range-l:10", "txn-put:1"} {
		c.loads = bad
		if _, err := makeLoads(c); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if got, err := memberCounts("1, 3"); err != nil || len(got) != 2 || got[1] != 3 {
		t.Errorf("memberCounts = %v, %v", got, err)
	}
	if _, err := memberCounts("0"); err == nil {
		t.Error("-members=0 accepted")
	}
}
