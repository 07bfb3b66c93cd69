package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildTools builds the floor and the etcd benchmark tool (the versions bench/go.mod
// pins) into a temporary directory. With a warm build cache it takes a few seconds.
func buildTools(t *testing.T) (floorBin, benchBin string) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build the floor and the benchmark tool")
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"github.com/plinthdb/plinth/bench/cmd/floor", "go.etcd.io/etcd/v3/tools/benchmark")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return filepath.Join(dir, "floor"), filepath.Join(dir, "benchmark")
}

// TestRoundAgainstFloor runs a tiny put round and a tiny range round of the real
// benchmark tool against the floor server and checks that the report was parsed and
// the server's CPU time was read from /proc.
func TestRoundAgainstFloor(t *testing.T) {
	floorBin, benchBin := buildTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Enough requests for the floor to use a few clock ticks of CPU (~20-50µs each),
	// few enough to finish in well under a second.
	const requests = 2000
	spec := Spec{Name: "floor", Bin: floorBin, Args: FloorArgs(256)}
	client := Client{Bin: benchBin, Clients: 50, Conns: 5}

	for _, load := range []Load{
		PutLoad(requests, 8, 256, 1000, true),
		RangeLoad(requests, 256, "s"),
		RangeLoad(requests, 256, "l"),
	} {
		t.Run(load.Name, func(t *testing.T) {
			srv, err := Start(ctx, spec, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			pid := srv.Pid()
			res, err := client.Run(ctx, srv, load)
			if stopErr := srv.Stop(); stopErr != nil {
				t.Errorf("Stop: %v", stopErr)
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests != requests || res.Report.RPS <= 0 || res.Report.ErrorCount() != 0 {
				t.Fatalf("requests %d, rps %v, errors %v", res.Requests, res.Report.RPS, res.Report.Errors)
			}
			if p99, ok := res.Report.P(99); !ok || p99 <= 0 {
				t.Fatalf("p99 = %v, %v", p99, ok)
			}
			if res.ServerCPU <= 0 || res.ClientCPU <= 0 {
				t.Fatalf("server CPU %v, client CPU %v", res.ServerCPU, res.ClientCPU)
			}
			if !strings.Contains(res.Output, "Requests/sec") {
				t.Fatalf("output lacks a summary:\n%s", res.Output)
			}
			t.Logf("%s: %.0f req/s, server CPU %v (%v/req), client CPU %v",
				load.Name, res.Report.RPS, res.ServerCPU, res.ServerCPUPerRequest(), res.ClientCPU)
			if err := syscall.Kill(pid, 0); err == nil {
				t.Fatalf("server pid %d still alive after Stop", pid)
			}
			if _, err := os.Stat(srv.dir); !os.IsNotExist(err) {
				t.Fatalf("server dir %s not removed: %v", srv.dir, err)
			}
		})
	}
}

// TestStartFailsWhenServerExits checks that Start reports a server that dies at once
// instead of waiting the whole ReadyTimeout, and cleans up after it.
func TestStartFailsWhenServerExits(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	root := t.TempDir()
	spec := Spec{Name: "dies", Bin: sh, Args: func(string, int, int) []string {
		return []string{"-c", "echo cannot start >&2; exit 3"}
	}}
	start := time.Now()
	_, err = Start(context.Background(), spec, root)
	if err == nil {
		t.Fatal("Start succeeded")
	}
	if !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "cannot start") {
		t.Fatalf("err = %v, want it to say the process exited, with its log", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("Start took %v", time.Since(start))
	}
	if left, _ := os.ReadDir(root); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestFreePortsDistinct(t *testing.T) {
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	if ports[0] == ports[1] || ports[0] == 0 {
		t.Fatalf("ports %v", ports)
	}
}

func TestToolErrors(t *testing.T) {
	stderr := "2026/11/23 16:34:04 INFO: [core] [Channel #281]Resolver state updated: {\n" +
		"  \"Addresses\": null,\n} (service config updated)\n" +
		" 8995 / 100000 [--->____] 8.99% ? p/s\r 9000 / 100000 [--->____] 9.00% ? p/s\n" +
		"panic: rpc error: code = Unavailable\n" +
		"goroutine 1 [running]:\n"
	got := toolErrors(stderr, 20)
	want := "panic: rpc error: code = Unavailable\ngoroutine 1 [running]:"
	if got != want {
		t.Fatalf("toolErrors = %q, want %q", got, want)
	}
	if got := toolErrors(stderr, 1); got != "goroutine 1 [running]:" {
		t.Fatalf("toolErrors(1) = %q", got)
	}
}
