package crash

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/plinthdb/plinth/internal/testmember"
)

// plinthBin is the plinth binary built by TestMain, or named by
// CRASH_TARGET_BIN.
var plinthBin string

var (
	seedFlag     = flag.Int64("crash.seed", 0, "seed of the random kill moments and load (0: pick one from the clock and log it)")
	durationFlag = flag.Duration("crash.duration", 0, "soak: run each test again and again, each time on a new member (or cluster), for this long (0: once)")
)

// sessions runs run once, or with -crash.duration again and again, each
// time as a subtest of its own (a new member, a new seed unless -crash.seed
// fixes it), until the duration has passed or a session fails. The checks of
// one session cover its own history: a soak is many sessions, not one long
// history, so that no check grows with the duration.
func sessions(t *testing.T, run func(t *testing.T)) {
	if *durationFlag <= 0 {
		run(t)
		return
	}
	deadline := time.Now().Add(*durationFlag)
	n := 0
	for time.Now().Before(deadline) {
		n++
		if !t.Run(fmt.Sprintf("session%d", n), run) {
			return
		}
	}
	t.Logf("%d sessions in %v", n, *durationFlag)
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if bin := os.Getenv("CRASH_TARGET_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			fmt.Fprintf(os.Stderr, "crash: CRASH_TARGET_BIN: %v\n", err)
			return 2
		}
		plinthBin = bin
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "plinth-crash-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "crash: %v\n", err)
		return 2
	}
	defer os.RemoveAll(dir)
	if plinthBin, err = testmember.Build(dir); err != nil {
		fmt.Fprintf(os.Stderr, "crash: %v\n", err)
		return 2
	}
	return m.Run()
}
