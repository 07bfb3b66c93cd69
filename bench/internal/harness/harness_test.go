package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
		PutLoad(requests, 8, 256, 100, false),
		TxnPutLoad(requests, 8, 256, 100, 2),
		GuardedUpdateLoad(requests, 256, 100),
		RangeLoad(requests, 256, "s"),
		RangeLoad(requests, 256, "l"),
	} {
		t.Run(load.Name, func(t *testing.T) {
			srv, err := Start(ctx, spec, t.TempDir(), 1)
			if err != nil {
				t.Fatal(err)
			}
			pid := srv.Members[0].Pid()
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
	spec := Spec{Name: "dies", Bin: sh, Args: func(Member) []string {
		return []string{"-c", "echo cannot start >&2; exit 3"}
	}}
	start := time.Now()
	_, err = Start(context.Background(), spec, root, 1)
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

// TestClusterOfThree starts three floor processes as the members of one cluster
// (the floor ignores its peers; what is tested is the harness): every member is
// ready, the tool's connections reach all three, the round's server CPU is the sum
// of the members', and Stop ends all three and removes the directory.
func TestClusterOfThree(t *testing.T) {
	floorBin, benchBin := buildTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := Spec{Name: "floor3", Bin: floorBin, Args: FloorArgs(256)}
	c, err := Start(ctx, spec, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if len(c.Members) != 3 || len(c.Endpoints()) != 3 {
		t.Fatalf("members %d, endpoints %v", len(c.Members), c.Endpoints())
	}
	res, err := Client{Bin: benchBin, Clients: 60, Conns: 6}.Run(ctx, c, PutLoad(3000, 8, 256, 3000, true))
	if err != nil {
		t.Fatal(err)
	}
	var sum time.Duration
	for i, d := range res.MemberCPU {
		if d <= 0 {
			t.Errorf("member %d used no CPU: the tool did not reach it", i+1)
		}
		sum += d
	}
	if len(res.MemberCPU) != 3 || sum != res.ServerCPU {
		t.Fatalf("member CPU %v, server CPU %v", res.MemberCPU, res.ServerCPU)
	}
	pids := []int{c.Members[0].Pid(), c.Members[1].Pid(), c.Members[2].Pid()}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Fatalf("member pid %d still alive after Stop", pid)
		}
	}
	if _, err := os.Stat(c.dir); !os.IsNotExist(err) {
		t.Fatalf("cluster dir %s not removed: %v", c.dir, err)
	}
	if one, err := Start(ctx, Spec{Name: "floor", Bin: floorBin, Args: FloorArgs(0), Single: true}, t.TempDir(), 3); err != nil {
		t.Fatal(err)
	} else if one.Stop(); len(one.Members) != 1 {
		t.Fatalf("a Single spec started %d members", len(one.Members))
	}
}

// TestStartClusterFailsWhenAMemberExits checks that when one member dies at once,
// Start stops the members that did start and removes everything.
func TestStartClusterFailsWhenAMemberExits(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	root := t.TempDir()
	var pidFiles []string
	spec := Spec{Name: "half", Bin: sh, Args: func(m Member) []string {
		if m.Name == "m3" {
			return []string{"-c", "echo m3 cannot start >&2; exit 3"}
		}
		f := filepath.Join(root, m.Name+".pid")
		pidFiles = append(pidFiles, f)
		return []string{"-c", "echo $$ > " + f + "; exec sleep 60"}
	}}
	_, err = Start(context.Background(), spec, root, 3)
	if err == nil || !strings.Contains(err.Error(), "m3 cannot start") {
		t.Fatalf("err = %v, want m3's failure with its log", err)
	}
	for _, f := range pidFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the member was stopped before its shell wrote the file
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			t.Fatalf("member pid %d still alive", pid)
		}
		os.Remove(f)
	}
	if left, _ := os.ReadDir(root); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestEtcdArgsOfAMember(t *testing.T) {
	m := Member{Name: "m2", DataDir: "/d", ClientPort: 1, PeerPort: 2,
		InitialCluster: "m1=http://127.0.0.1:4,m2=http://127.0.0.1:2,m3=http://127.0.0.1:6"}
	got := strings.Join(EtcdArgs(0)(m), " ")
	for _, want := range []string{"--name m2", "--data-dir /d", "--listen-client-urls http://127.0.0.1:1",
		"--initial-advertise-peer-urls http://127.0.0.1:2", "--initial-cluster " + m.InitialCluster,
		"--initial-cluster-state new", "--initial-cluster-token " + ClusterToken} {
		if !strings.Contains(got, want) {
			t.Errorf("args %q lack %q", got, want)
		}
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

func TestVmRSS(t *testing.T) {
	got, err := vmRSS([]byte("Name:\tplinth\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n"))
	if err != nil || got != 12345<<10 {
		t.Fatalf("vmRSS = %d, %v", got, err)
	}
	if _, err := vmRSS([]byte("Name:\tx\n")); err == nil {
		t.Fatal("no VmRSS line: no error")
	}
	own, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	if got, err := vmRSS(own); err != nil || got <= 0 {
		t.Fatalf("own VmRSS = %d, %v", got, err)
	}
}
