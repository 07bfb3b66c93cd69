package crash

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/plinthdb/plinth/internal/testmember"
)

// plinthBin is the plinth binary built by TestMain, or named by
// CRASH_TARGET_BIN.
var plinthBin string

var seedFlag = flag.Int64("crash.seed", 0, "seed of the random kill moments and load (0: pick one from the clock and log it)")

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
