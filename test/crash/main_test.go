package crash

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
	if plinthBin, err = buildPlinth(dir); err != nil {
		fmt.Fprintf(os.Stderr, "crash: %v\n", err)
		return 2
	}
	return m.Run()
}

// buildPlinth builds ./cmd/plinth of the enclosing module (found with
// `go env GOMOD`) into dir and returns the binary's path. The binary is built
// without -race even when the test is: the test checks the server, and -race
// on the test checks the test.
func buildPlinth(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module")
	}
	root := filepath.Dir(gomod)
	bin := filepath.Join(dir, "plinth")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/plinth")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building plinth in %s: %w\n%s", root, err, out)
	}
	return bin, nil
}
