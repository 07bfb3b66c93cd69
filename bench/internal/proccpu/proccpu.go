// Package proccpu reads how much CPU time a process has used, from /proc/PID/stat
// (Linux): user plus system time of all its threads, in clock ticks, converted with
// the system's clock tick rate (CLK_TCK, as getconf reports it).
//
// It reads only; it never signals or waits for a process.
package proccpu

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultClockTicks is the tick rate assumed when getconf cannot be run; it is the
// value of CLK_TCK on every mainstream Linux architecture.
const DefaultClockTicks = 100

var clk struct {
	once  sync.Once
	ticks int64
}

// ClockTicks returns the number of clock ticks per second (CLK_TCK), asking getconf
// once and falling back to DefaultClockTicks.
func ClockTicks() int64 {
	clk.once.Do(func() {
		clk.ticks = DefaultClockTicks
		out, err := exec.Command("getconf", "CLK_TCK").Output()
		if err != nil {
			return
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && n > 0 {
			clk.ticks = n
		}
	})
	return clk.ticks
}

// Ticks returns utime+stime of process pid in clock ticks.
func Ticks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("proccpu: %w", err)
	}
	return parseStat(b)
}

// Time returns utime+stime of process pid.
func Time(pid int) (time.Duration, error) {
	t, err := Ticks(pid)
	if err != nil {
		return 0, err
	}
	return TicksToDuration(t), nil
}

// TicksToDuration converts clock ticks to a duration.
func TicksToDuration(ticks int64) time.Duration {
	return time.Duration(ticks) * time.Second / time.Duration(ClockTicks())
}

// parseStat returns fields 14 (utime) + 15 (stime) of a /proc/PID/stat line. The
// second field, the command name in parentheses, may itself hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (int64, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, fmt.Errorf("proccpu: stat %q has no command name", b)
	}
	// After ')' come field 3 (state) onwards; utime is field 14, stime field 15.
	f := strings.Fields(string(b[end+1:]))
	const utime, stime = 14 - 3, 15 - 3
	if len(f) <= stime {
		return 0, fmt.Errorf("proccpu: stat has %d fields after the command name, want > %d", len(f), stime)
	}
	u, err := strconv.ParseInt(f[utime], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proccpu: utime %q: %w", f[utime], err)
	}
	s, err := strconv.ParseInt(f[stime], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proccpu: stime %q: %w", f[stime], err)
	}
	return u + s, nil
}
