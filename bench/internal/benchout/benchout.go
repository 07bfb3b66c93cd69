// Package benchout reads the report that the etcd benchmark tool
// (go.etcd.io/etcd/v3/tools/benchmark) prints when a run ends: the summary
// (total time, requests per second), the latency percentiles and the error
// distribution. It accepts both the default precision ("%4.4f") and --precise ("%g"),
// and of the reports of a load with phases (watch, watch-latency) keeps the last.
//
// It only reads text; it never runs the tool.
package benchout

import (
	"bufio"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrNoSummary is returned when the output has no summary, as when every request
// failed or the tool stopped before the end.
var ErrNoSummary = errors.New("benchout: no summary in benchmark output")

// Report is what one run of the benchmark tool reported.
type Report struct {
	Total   time.Duration // wall time of the run
	Slowest time.Duration
	Fastest time.Duration
	Average time.Duration
	Stddev  time.Duration
	RPS     float64 // successful requests per second

	// Percentiles maps a percentile (10, 25, 50, 75, 90, 95, 99, 99.9) to the latency
	// at it. The tool leaves out a percentile whose latency is zero.
	Percentiles map[float64]time.Duration

	// Errors maps each error message to how many requests failed with it.
	Errors map[string]int
}

// P returns the latency at percentile p (for example 99), and whether it was reported.
func (r Report) P(p float64) (time.Duration, bool) {
	d, ok := r.Percentiles[p]
	return d, ok
}

// ErrorCount returns the number of failed requests.
func (r Report) ErrorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// Parse reads the benchmark tool's standard output. It returns ErrNoSummary (with
// the errors it found filled in) when there is no summary.
func Parse(out string) (Report, error) {
	r := Report{Percentiles: map[float64]time.Duration{}, Errors: map[string]int{}}
	section := ""
	haveRPS := false
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		// A progress bar redraws itself with carriage returns; keep what follows the last.
		if i := strings.LastIndexByte(line, '\r'); i >= 0 {
			line = line[i+1:]
		}
		trimmed := strings.TrimSpace(line)
		switch trimmed {
		case "Summary:", "Response time histogram:", "Latency distribution:", "Error distribution:":
			section = trimmed
			continue
		case "":
			continue
		}
		if strings.HasSuffix(trimmed, " summary:") {
			// The watch loads print a report per phase ("Watch creation
			// summary:", then "Watch events received summary:"): the last
			// one, the events, is the load's.
			r = Report{Percentiles: map[float64]time.Duration{}, Errors: map[string]int{}}
			section, haveRPS = "", false
			continue
		}
		var err error
		switch section {
		case "Summary:":
			haveRPS, err = r.summaryLine(trimmed, haveRPS)
		case "Latency distribution:":
			err = r.percentileLine(trimmed)
		case "Error distribution:":
			err = r.errorLine(trimmed)
		}
		if err != nil {
			return r, err
		}
	}
	if err := sc.Err(); err != nil {
		return r, fmt.Errorf("benchout: %w", err)
	}
	if !haveRPS {
		return r, ErrNoSummary
	}
	return r, nil
}

// summaryLine reads "Name:\tvalue[ secs]." and reports whether Requests/sec was seen.
func (r *Report) summaryLine(line string, haveRPS bool) (bool, error) {
	name, value, ok := strings.Cut(line, ":")
	if !ok {
		return haveRPS, fmt.Errorf("benchout: summary line %q has no colon", line)
	}
	value = strings.TrimSpace(value)
	if name == "Requests/sec" {
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return haveRPS, fmt.Errorf("benchout: requests/sec %q: %w", value, err)
		}
		r.RPS = v
		return true, nil
	}
	var dst *time.Duration
	switch name {
	case "Total":
		dst = &r.Total
	case "Slowest":
		dst = &r.Slowest
	case "Fastest":
		dst = &r.Fastest
	case "Average":
		dst = &r.Average
	case "Stddev":
		dst = &r.Stddev
	default:
		return haveRPS, nil // a line a later version may add
	}
	d, err := parseSecs(value)
	if err != nil {
		return haveRPS, fmt.Errorf("benchout: %s: %w", name, err)
	}
	*dst = d
	return haveRPS, nil
}

// percentileLine reads "99% in 0.0954 secs.".
func (r *Report) percentileLine(line string) error {
	pct, rest, ok := strings.Cut(line, "% in ")
	if !ok {
		return fmt.Errorf("benchout: latency line %q", line)
	}
	p, err := strconv.ParseFloat(pct, 64)
	if err != nil {
		return fmt.Errorf("benchout: latency line %q: %w", line, err)
	}
	d, err := parseSecs(rest)
	if err != nil {
		return fmt.Errorf("benchout: latency line %q: %w", line, err)
	}
	r.Percentiles[p] = d
	return nil
}

// errorLine reads "[12]\tmessage".
func (r *Report) errorLine(line string) error {
	if !strings.HasPrefix(line, "[") {
		return fmt.Errorf("benchout: error line %q", line)
	}
	num, msg, ok := strings.Cut(line[1:], "]")
	if !ok {
		return fmt.Errorf("benchout: error line %q", line)
	}
	n, err := strconv.Atoi(num)
	if err != nil {
		return fmt.Errorf("benchout: error line %q: %w", line, err)
	}
	r.Errors[strings.TrimSpace(msg)] += n
	return nil
}

// parseSecs reads "0.0123 secs." or "0.0123 secs".
func parseSecs(s string) (time.Duration, error) {
	s = strings.TrimSuffix(strings.TrimSpace(s), ".")
	s = strings.TrimSpace(strings.TrimSuffix(s, "secs"))
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("seconds %q: %w", s, err)
	}
	return time.Duration(v * float64(time.Second)), nil
}
