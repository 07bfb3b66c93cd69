package compat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The target that every test compares with the reference etcd. TestMain sets
// exactly one of the two before any test runs.
var (
	// selftest: the target is a second embedded etcd (COMPAT_SELFTEST=1).
	// Used to prove the harness: etcd against etcd must never mismatch.
	selftest bool
	// targetBin: the plinth binary (built by TestMain, or COMPAT_TARGET_BIN).
	targetBin string
)

// plinthModule is the module line that identifies the repository root.
const plinthModule = "module github.com/plinthdb/plinth"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

// toolsDir holds binaries that tests build on demand (plinthctl); run
// removes it when the tests end.
var toolsDir string

func run(m *testing.M) int {
	var err error
	if toolsDir, err = os.MkdirTemp("", "plinth-compat-tools-"); err != nil {
		fmt.Fprintf(os.Stderr, "compat: %v\n", err)
		return 2
	}
	defer os.RemoveAll(toolsDir)
	switch {
	case os.Getenv("COMPAT_SELFTEST") == "1":
		selftest = true
	case os.Getenv("COMPAT_TARGET_BIN") != "":
		targetBin = os.Getenv("COMPAT_TARGET_BIN")
		if _, err := os.Stat(targetBin); err != nil {
			fmt.Fprintf(os.Stderr, "compat: COMPAT_TARGET_BIN: %v\n", err)
			return 2
		}
	default:
		dir, err := os.MkdirTemp("", "plinth-compat-bin-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "compat: %v\n", err)
			return 2
		}
		defer os.RemoveAll(dir)
		targetBin, err = buildPlinth(dir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "compat: %v\n", err)
			return 2
		}
	}
	return m.Run()
}

// buildPlinth builds ./cmd/plinth of the enclosing plinth repository into dir
// and returns the binary's path.
func buildPlinth(dir string) (string, error) { return buildCommand(dir, "plinth") }

// buildCommand builds ./cmd/name (plinth, plinthctl) of the enclosing plinth
// repository into dir and returns the binary's path.
func buildCommand(dir, name string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building %s in %s: %w\n%s", name, root, err, out)
	}
	return bin, nil
}

// repoRoot walks up from the working directory (test/compat when run by go
// test) to the directory whose go.mod declares the plinth module itself, not
// this test module.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && declaresPlinth(data) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("compat: no go.mod declaring github.com/plinthdb/plinth above the working directory")
		}
		dir = parent
	}
}

func declaresPlinth(gomod []byte) bool {
	for _, line := range bytes.Split(gomod, []byte("\n")) {
		if string(bytes.TrimSpace(line)) == plinthModule {
			return true
		}
	}
	return false
}
