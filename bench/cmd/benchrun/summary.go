package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/plinthdb/plinth/bench/internal/harness"
)

// summary is the medians of one server's rounds of one load.
type summary struct {
	server string
	rounds int     // rounds that measured
	tried  int     // rounds run, failed ones included
	errors int     // failed requests, over all rounds
	rps    float64 // requests per second
	p99    time.Duration
	cpu    time.Duration // server CPU per request
	// cpuMin and cpuMax bound the server CPU per request over the rounds:
	// how far one round can be from the next on this machine.
	cpuMin, cpuMax time.Duration
	client         time.Duration // benchmark tool CPU per request
	rss            int64         // resident memory of the server (summed over members), for the loads that read it
}

// summarize takes the medians of a server's measured rounds out of tried.
func summarize(server string, tried int, rs []harness.Result) summary {
	s := summary{server: server, rounds: len(rs), tried: tried}
	var rps []float64
	var p99, cpu, client []time.Duration
	var rss []float64
	for _, r := range rs {
		rss = append(rss, float64(r.Resident()))
		s.errors += r.Report.ErrorCount()
		rps = append(rps, r.Report.RPS)
		p, _ := r.Report.P(99)
		p99 = append(p99, p)
		cpu = append(cpu, r.ServerCPUPerRequest())
		client = append(client, r.ClientCPUPerRequest())
	}
	s.rps = median(rps)
	s.p99 = median(p99)
	s.cpu = median(cpu)
	if len(cpu) > 0 {
		s.cpuMin, s.cpuMax = slices.Min(cpu), slices.Max(cpu)
	}
	s.client = median(client)
	s.rss = int64(median(rss))
	return s
}

// median returns the middle value (the mean of the two middle values for an even
// count), or zero for none.
func median[T ~int64 | ~float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// ratio returns a/b formatted, or "-" when b is zero.
func ratio(a, b float64) string {
	if b == 0 || a == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// printTable writes the medians of each server and the ratios between them.
func printTable(w io.Writer, title string, sums []summary) {
	fmt.Fprintf(w, "\n== %s ==\n", title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	withRSS := slices.ContainsFunc(sums, func(s summary) bool { return s.rss > 0 })
	rssHead, rssNone := "", ""
	if withRSS {
		rssHead, rssNone = "server RSS MiB\t", "-\t"
	}
	fmt.Fprintln(tw, "server\trounds\treq/s\tp99 ms\tserver CPU µs/req\t(min-max)\tclient CPU µs/req\tfailed reqs\t"+rssHead)
	for _, s := range sums {
		if s.rounds == 0 {
			fmt.Fprintf(tw, "%s\t0/%d\t-\t-\t-\t-\t-\t-\t%s\n", s.server, s.tried, rssNone)
			continue
		}
		rss := ""
		if withRSS {
			rss = fmt.Sprintf("%.1f\t", mib(s.rss))
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%.0f\t%.2f\t%.1f\t(%.1f-%.1f)\t%.1f\t%d\t%s\n",
			s.server, s.rounds, s.tried, s.rps, ms(s.p99), us(s.cpu), us(s.cpuMin), us(s.cpuMax), us(s.client), s.errors, rss)
	}
	tw.Flush()

	byName := map[string]summary{}
	for _, s := range sums {
		byName[s.server] = s
	}
	pairs := [][2]string{{"plinth", "etcd"}, {"plinth", "floor"}, {"etcd", "floor"},
		{"plinth", "floor-each"}, {"etcd", "floor-each"}, {"floor-each", "floor"}}
	var lines [][2]summary
	for _, p := range pairs {
		a, okA := byName[p[0]]
		b, okB := byName[p[1]]
		if okA && okB && a.rounds > 0 && b.rounds > 0 {
			lines = append(lines, [2]summary{a, b})
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "ratio\treq/s\tp99\tserver CPU/req\t"+strings.Replace(rssHead, " MiB", "", 1))
	for _, l := range lines {
		a, b := l[0], l[1]
		rss := ""
		if withRSS {
			rss = ratio(mib(a.rss), mib(b.rss)) + "\t"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.server+"/"+b.server,
			ratio(a.rps, b.rps), ratio(ms(a.p99), ms(b.p99)), ratio(us(a.cpu), us(b.cpu)), rss)
	}
	tw.Flush()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func mib(b int64) float64        { return float64(b) / (1 << 20) }

// describeLoad is the benchmark tool arguments of a load, for table titles.
func describeLoad(l harness.Load, c harness.Client, members int) string {
	who := "1 member"
	if members > 1 {
		who = fmt.Sprintf("%d members (CPU summed over them; the floor is one process)", members)
	}
	if l.Watch {
		return fmt.Sprintf("%s, %s: benchmark --clients=%d --conns=%d %s; %d events or watchers per round",
			l.Name, who, c.Clients, c.Conns, strings.Join(l.Args, " "), l.Total)
	}
	unit := ""
	if l.Name == "lease-keepalive" {
		unit = "; a request is one keep-alive: req/s is keep-alives/s, CPU/req is CPU per keep-alive"
	}
	return fmt.Sprintf("%s, %s: benchmark --clients=%d --conns=%d %s --total=%d%s",
		l.Name, who, c.Clients, c.Conns, strings.Join(l.Args, " "), l.Total, unit)
}
