// Command benchrun races plinth against the reference etcd (the version pinned in
// bench/go.mod) and the floor (bench/floor, a KV server that does no work) with the
// etcd benchmark tool, in alternating rounds on the same machine, and prints per load
// the medians of requests/sec, p99 latency and server CPU per request, with the ratios
// plinth/etcd, plinth/floor and etcd/floor. See bench/README.md.
//
// Run it from the repository root as
//
//	go -C bench run ./cmd/benchrun [flags]
//
// It builds plinth (go build ./cmd/plinth in the repository root), etcd, the floor and
// the benchmark tool into -out, and goes on without plinth when plinth does not build.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/plinthdb/plinth/bench/internal/harness"
)

const benchModule = "github.com/plinthdb/plinth/bench"

type config struct {
	rounds       int
	loads        string
	servers      string
	clients      int
	conns        int
	putTotal     int
	rangeTotal   int
	leaseTotal   int
	total        int
	keySize      int
	valSize      int
	keySpace     int
	sequential   bool
	txnOps       int
	members      string
	quick        bool
	plinthBin    string
	out          string
	dataRoot     string
	quota        int64
	roundTimeout time.Duration
	verbose      bool
	// the watch loads
	watchers     int
	idleWatchers int
	watchStreams int
	watchKeys    int
	watchPuts    int
	watchRate    int
	watchSettle  time.Duration
}

func main() {
	var c config
	flag.IntVar(&c.rounds, "rounds", 3, "rounds per load; each round runs every server once, in turn")
	flag.StringVar(&c.loads, "loads", "put,range-l,range-s", "loads to run: put (sequential keys), put-rand (random keys), txn-put, stm (a read, then a write guarded by the mod revision read, as Kubernetes updates), range-l (linearizable), range-s (serializable), lease-keepalive, watch, watch-latency, watch-idle; put, txn-put and stm loads take a key space as put-rand:10000 (or :10k), watch loads their watchers as watch-idle:100k")
	flag.StringVar(&c.members, "members", "1", "cluster sizes to run, e.g. 3 or 1,3: plinth and etcd run as that many member processes on loopback, the floor as one process")
	flag.StringVar(&c.servers, "servers", "plinth,etcd,floor", "servers to race, in the order each round runs them; floor-each (one floor process per member, no peers) is a diagnostic for -members > 1")
	flag.IntVar(&c.clients, "clients", 1000, "benchmark --clients")
	flag.IntVar(&c.conns, "conns", 100, "benchmark --conns")
	flag.IntVar(&c.putTotal, "put-total", 100000, "requests per round of the put, txn-put and stm loads")
	flag.IntVar(&c.rangeTotal, "range-total", 200000, "requests per range round")
	flag.IntVar(&c.leaseTotal, "lease-total", 100000, "keep-alives per lease-keepalive round")
	flag.IntVar(&c.total, "total", 0, "requests per round for every load (overrides -put-total, -range-total and -lease-total)")
	flag.IntVar(&c.keySize, "key-size", 8, "benchmark put --key-size")
	flag.IntVar(&c.valSize, "val-size", 256, "benchmark put --val-size, and the size of the value range loads read")
	flag.IntVar(&c.keySpace, "key-space-size", 100000, "benchmark put --key-space-size")
	flag.BoolVar(&c.sequential, "sequential-keys", true, "benchmark put --sequential-keys for the put load (false: random keys, as put-rand)")
	flag.IntVar(&c.txnOps, "txn-ops", 1, "benchmark txn-put --txn-ops: puts per txn")
	flag.BoolVar(&c.quick, "quick", false, "smoke test: 1 round, 5000 puts, 10000 ranges and 10000 keep-alives (explicit flags still win)")
	flag.StringVar(&c.plinthBin, "plinth-bin", "", "use this plinth executable instead of building ./cmd/plinth")
	flag.StringVar(&c.out, "out", "", "directory for the built executables (default: bench/out)")
	flag.StringVar(&c.dataRoot, "data-root", "", "directory under which each server gets a fresh data directory (default: the system temp dir)")
	flag.Int64Var(&c.quota, "quota-backend-bytes", 0, "pass --quota-backend-bytes to etcd and plinth when positive")
	flag.DurationVar(&c.roundTimeout, "round-timeout", 3*time.Minute, "limit on one server's round (start, load, stop)")
	flag.BoolVar(&c.verbose, "v", false, "print the benchmark tool's output of every round")
	flag.IntVar(&c.watchers, "watchers", 10000, "watchers of the watch and watch-latency loads")
	flag.IntVar(&c.idleWatchers, "idle-watchers", 100000, "idle watchers of the watch-idle load")
	flag.IntVar(&c.watchStreams, "watch-streams", 100, "gRPC watch streams the watchers are spread over")
	flag.IntVar(&c.watchKeys, "watch-keys", 10, "watch load: keys the watchers are spread over (each put reaches watchers/keys of them)")
	flag.IntVar(&c.watchPuts, "watch-puts", 100, "puts of the watch and watch-latency loads")
	flag.IntVar(&c.watchRate, "watch-put-rate", 10, "watch-latency load: puts per second")
	flag.DurationVar(&c.watchSettle, "watch-settle", 5*time.Second, "watch-idle load: wait after the last watcher is created before reading the servers' RSS")
	flag.Parse()
	if c.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["rounds"] {
			c.rounds = 1
		}
		if !set["put-total"] {
			c.putTotal = 5000
		}
		if !set["range-total"] {
			c.rangeTotal = 10000
		}
		if !set["lease-total"] {
			c.leaseTotal = 10000
		}
		if !set["watch-puts"] {
			c.watchPuts = 20
		}
	}
	if c.total > 0 {
		c.putTotal, c.rangeTotal, c.leaseTotal = c.total, c.total, c.total
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintf(os.Stderr, "benchrun: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	if c.rounds < 1 || c.clients < 1 || c.conns < 1 || c.putTotal < 1 || c.rangeTotal < 1 || c.leaseTotal < 1 {
		return errors.New("-rounds, -clients, -conns and the totals must be positive")
	}
	loads, err := makeLoads(c)
	if err != nil {
		return err
	}
	sizes, err := memberCounts(c.members)
	if err != nil {
		return err
	}
	benchDir, err := findBenchDir()
	if err != nil {
		return err
	}
	repoRoot := filepath.Dir(benchDir)
	if c.out == "" {
		c.out = filepath.Join(benchDir, "out")
	}
	if c.out, err = filepath.Abs(c.out); err != nil {
		return err
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}

	wanted := splitList(c.servers)
	for _, name := range wanted {
		if name != "plinth" && name != "etcd" && name != "floor" && name != "floor-each" {
			return fmt.Errorf("unknown server %q (want plinth, etcd, floor, floor-each)", name)
		}
	}

	// Build: the bench module's executables in one go build, then plinth.
	logf("building etcd, floor and the benchmark tool into %s", c.out)
	if err := goBuild(ctx, benchDir, c.out+string(filepath.Separator),
		"./cmd/etcd", "./cmd/floor", "go.etcd.io/etcd/v3/tools/benchmark"); err != nil {
		return err
	}
	specs := map[string]harness.Spec{
		"etcd":  {Name: "etcd", Bin: filepath.Join(c.out, "etcd"), Args: harness.EtcdArgs(c.quota)},
		"floor": {Name: "floor", Bin: filepath.Join(c.out, "floor"), Args: harness.FloorArgs(c.valSize), Single: true},
		// floor-each runs one floor process per member, with no peers: what
		// spreading the clients over that many processes costs, with no Raft.
		"floor-each": {Name: "floor-each", Bin: filepath.Join(c.out, "floor"), Args: harness.FloorArgs(c.valSize)},
	}
	var notes []string
	if contains(wanted, "plinth") {
		bin, err := plinthBinary(ctx, c, repoRoot)
		if err != nil {
			logf("plinth left out of this run: %v", err)
			first, _, _ := strings.Cut(err.Error(), "\n")
			notes = append(notes, "plinth left out of this run: "+first+" (see the build output above)")
		} else {
			specs["plinth"] = harness.Spec{Name: "plinth", Bin: bin, Args: harness.EtcdArgs(c.quota)}
		}
	}
	var servers []harness.Spec
	for _, name := range wanted {
		if s, ok := specs[name]; ok {
			servers = append(servers, s)
		}
	}
	client := harness.Client{Bin: filepath.Join(c.out, "benchmark"), Clients: c.clients, Conns: c.conns}

	var header bytes.Buffer
	fmt.Fprintf(&header, "benchrun: %d CPUs, %s/%s, %s; %s\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH,
		runtime.Version(), moduleVersions(ctx, benchDir))
	fmt.Fprintf(&header, "servers: %s; %d round(s) per load, servers in turn, each on a fresh data dir; members: %s (the floor: one process)\n",
		names(servers), c.rounds, c.members)
	for _, n := range notes {
		fmt.Fprintln(&header, n)
	}
	logf("%s", strings.TrimSpace(header.String()))

	// Rounds: for each cluster size and load, round after round, every server in turn.
	var tables bytes.Buffer
	failed := 0
	start := time.Now()
	for _, members := range sizes {
		for _, load := range loads {
			results := map[string][]harness.Result{}
			tried := map[string]int{}
			tag := fmt.Sprintf("%s/%d", load.Name, members)
			for r := 1; r <= c.rounds; r++ {
				for _, spec := range servers {
					if err := ctx.Err(); err != nil {
						return err
					}
					if load.Watch && strings.HasPrefix(spec.Name, "floor") {
						continue // the floor serves no watches
					}
					tried[spec.Name]++
					res, err := runRound(ctx, c, client, spec, members, load)
					if err != nil {
						if ctx.Err() != nil {
							return ctx.Err() // interrupted: the round's failure is ours
						}
						failed++
						logf("%-14s %-7s round %d: FAILED: %v", tag, spec.Name, r, err)
						continue
					}
					results[spec.Name] = append(results[spec.Name], res)
					p99, _ := res.Report.P(99)
					logf("%-14s %-7s round %d: %7.0f req/s  p99 %7.2f ms  server CPU %6.1f µs/req%s  client CPU %5.1f µs/req  failed %d%s",
						tag, spec.Name, r, res.Report.RPS, ms(p99), us(res.ServerCPUPerRequest()), memberShares(res),
						us(res.ClientCPUPerRequest()), res.Report.ErrorCount(), residentShares(res))
					if c.verbose {
						fmt.Fprintln(os.Stderr, res.Output)
					}
				}
			}
			var sums []summary
			for _, spec := range servers {
				if tried[spec.Name] > 0 {
					sums = append(sums, summarize(spec.Name, tried[spec.Name], results[spec.Name]))
				}
			}
			printTable(&tables, describeLoad(load, client, members)+" (medians over rounds)", sums)
		}
	}
	fmt.Print(header.String())
	fmt.Print(tables.String())
	fmt.Printf("\nbenchrun: done in %s\n", time.Since(start).Round(time.Second))
	if failed > 0 {
		return fmt.Errorf("%d round(s) failed", failed)
	}
	return nil
}

// runRound starts a fresh server of members members, runs the load against it and
// stops it.
func runRound(ctx context.Context, c config, client harness.Client, spec harness.Spec, members int, load harness.Load) (harness.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, c.roundTimeout)
	defer cancel()
	srv, err := harness.Start(ctx, spec, c.dataRoot, members)
	if err != nil {
		return harness.Result{}, err
	}
	res, err := client.Run(ctx, srv, load)
	if stopErr := srv.Stop(); err == nil && stopErr != nil {
		err = stopErr
	}
	return res, err
}

// makeLoads parses -loads. A put load's name may end in :N (N keys, or Nk
// thousands) to set its key space; otherwise -key-space-size sets it.
func makeLoads(c config) ([]harness.Load, error) {
	var loads []harness.Load
	for _, name := range splitList(c.loads) {
		base, space, err := parseKeySpace(name, c.keySpace)
		if err != nil {
			return nil, err
		}
		var l harness.Load
		switch base {
		case "put":
			l = harness.PutLoad(c.putTotal, c.keySize, c.valSize, space, c.sequential)
		case "put-rand":
			l = harness.PutLoad(c.putTotal, c.keySize, c.valSize, space, false)
		case "txn-put":
			if c.txnOps < 1 || c.txnOps > space {
				return nil, fmt.Errorf("-txn-ops %d: want 1 to the key space (%d)", c.txnOps, space)
			}
			l = harness.TxnPutLoad(c.putTotal, c.keySize, c.valSize, space, c.txnOps)
		case "stm":
			l = harness.GuardedUpdateLoad(c.putTotal, c.valSize, space)
		case "range-l", "range-s":
			if base != name {
				return nil, fmt.Errorf("load %q: range loads take no key space", name)
			}
			l = harness.RangeLoad(c.rangeTotal, c.valSize, strings.TrimPrefix(name, "range-"))
		case "lease-keepalive":
			if base != name {
				return nil, fmt.Errorf("load %q: lease-keepalive takes no key space", name)
			}
			l = harness.LeaseKeepAliveLoad(c.leaseTotal)
		case "watch", "watch-latency":
			watchers := c.watchers
			if base != name {
				watchers = space // watch:10k: the :N is the watchers
			}
			if c.watchStreams < 1 || c.watchKeys < 1 || c.watchPuts < 1 || c.watchRate < 1 || watchers < 1 {
				return nil, errors.New("-watchers, -watch-streams, -watch-keys, -watch-puts and -watch-put-rate must be positive")
			}
			if base == "watch" {
				l = harness.WatchLoad(c.watchPuts, watchers, c.watchStreams, c.watchKeys)
			} else {
				l = harness.WatchLatencyLoad(c.watchPuts, c.watchRate, watchers, c.watchStreams)
			}
		case "watch-idle":
			watchers := c.idleWatchers
			if base != name {
				watchers = space
			}
			if watchers < 1 || c.watchStreams < 1 {
				return nil, errors.New("-idle-watchers and -watch-streams must be positive")
			}
			l = harness.IdleWatchLoad(watchers, c.watchStreams, c.watchSettle)
		default:
			return nil, fmt.Errorf("unknown load %q (want put, put-rand, txn-put, stm, range-l, range-s, lease-keepalive, watch, watch-latency, watch-idle)", name)
		}
		l.Name = name
		loads = append(loads, l)
	}
	if len(loads) == 0 {
		return nil, errors.New("no loads")
	}
	return loads, nil
}

// parseKeySpace splits "put-rand:10k" into "put-rand" and 10000; a name without
// ":" has key space def.
func parseKeySpace(name string, def int) (string, int, error) {
	base, n, ok := strings.Cut(name, ":")
	if !ok {
		return name, def, nil
	}
	mult := 1
	if rest, ok := strings.CutSuffix(n, "k"); ok {
		n, mult = rest, 1000
	}
	v, err := strconv.Atoi(n)
	if err != nil || v < 1 {
		return "", 0, fmt.Errorf("load %q: key space %q is not a positive number", name, n)
	}
	return base, v * mult, nil
}

// memberCounts parses -members: cluster sizes, each 1 or more.
func memberCounts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-members: %q is not a positive number", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("-members: none given")
	}
	return out, nil
}

// memberShares formats each member's CPU per request when there are several
// (" = 40.1+12.3+12.0"), and is empty for one.
func memberShares(r harness.Result) string {
	if len(r.MemberCPU) < 2 || r.Requests == 0 {
		return ""
	}
	var parts []string
	for _, d := range r.MemberCPU {
		parts = append(parts, fmt.Sprintf("%.1f", us(d/time.Duration(r.Requests))))
	}
	return " = " + strings.Join(parts, "+")
}

// residentShares formats the members' resident memory, for the loads that
// read it ("  RSS 81.2 MiB = 30.1+25.6+25.5").
func residentShares(r harness.Result) string {
	if len(r.ResidentBytes) == 0 {
		return ""
	}
	out := fmt.Sprintf("  RSS %.1f MiB", mib(r.Resident()))
	if len(r.ResidentBytes) > 1 {
		var parts []string
		for _, b := range r.ResidentBytes {
			parts = append(parts, fmt.Sprintf("%.1f", mib(b)))
		}
		out += " = " + strings.Join(parts, "+")
	}
	return out
}

// plinthBinary returns -plinth-bin, or builds ./cmd/plinth in the repository root.
func plinthBinary(ctx context.Context, c config, repoRoot string) (string, error) {
	if c.plinthBin != "" {
		// A relative path may be meant from the repository root (make runs benchrun
		// with go -C bench, so the working directory is bench/).
		candidates := []string{c.plinthBin}
		if !filepath.IsAbs(c.plinthBin) {
			candidates = append(candidates, filepath.Join(repoRoot, c.plinthBin))
		}
		for _, cand := range candidates {
			bin, err := filepath.Abs(cand)
			if err != nil {
				return "", err
			}
			if st, err := os.Stat(bin); err == nil && !st.IsDir() {
				return bin, nil
			}
		}
		return "", fmt.Errorf("-plinth-bin %s: no such file (looked in %s)", c.plinthBin, strings.Join(candidates, ", "))
	}
	bin := filepath.Join(c.out, "plinth")
	logf("building plinth (%s) into %s", repoRoot, bin)
	if err := goBuild(ctx, repoRoot, bin, "./cmd/plinth"); err != nil {
		return "", err
	}
	return bin, nil
}

// goBuild runs go build -o out pkgs... in dir.
func goBuild(ctx context.Context, dir, out string, pkgs ...string) error {
	args := append([]string{"build", "-o", out}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), dir, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// findBenchDir walks up from the working directory to the directory whose go.mod
// declares the bench module.
func findBenchDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if moduleOf(filepath.Join(dir, "go.mod")) == benchModule {
			return dir, nil
		}
		if sub := filepath.Join(dir, "bench"); moduleOf(filepath.Join(sub, "go.mod")) == benchModule {
			return sub, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no %s module above the working directory; run from the repository (go -C bench run ./cmd/benchrun)", benchModule)
		}
		dir = parent
	}
}

// moduleOf returns the module path declared in a go.mod file, or "".
func moduleOf(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// moduleVersions names the etcd versions that bench/go.mod pins.
func moduleVersions(ctx context.Context, benchDir string) string {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Path}} {{.Version}}",
		"go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/v3")
	cmd.Dir = benchDir
	b, err := cmd.Output()
	if err != nil {
		return "etcd versions unknown"
	}
	return strings.Join(strings.Split(strings.TrimSpace(string(b)), "\n"), ", ")
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func names(specs []harness.Spec) string {
	var ns []string
	for _, s := range specs {
		ns = append(ns, s.Name)
	}
	return strings.Join(ns, ", ")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
