// Command plinth runs a plinth member: a strongly consistent key-value store
// that speaks the etcd v3 API. Its flags carry etcd's names and meanings, and
// are read from etcd's environment variables too (ETCD_INITIAL_CLUSTER for
// --initial-cluster), so an etcd command line and environment start plinth
// unchanged.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/plinthdb/plinth/internal/gcpercent"
	"github.com/plinthdb/plinth/internal/idlemem"
	"github.com/plinthdb/plinth/internal/server"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// plinthSetsGCPercent reports whether plinth sets the GC's percent itself
// (internal/gcpercent): unless the environment gives GOGC a value, which then
// applies as to any Go program. A member's large data lives outside the Go
// heap (Pebble's memtables and block cache are allocated by hand), so the
// heap is mostly short-lived request garbage: letting it grow to five times
// what is live rather than twice collects a quarter as often. Alternating
// runs of the benchmark tool on one machine (docs/performance.md, machine
// M): server CPU per request 7-10% lower at 400 than at 100 for one member's
// random puts and txn-puts, three members' puts and three members' lease
// keep-alives; the resident memory of idle watchers the same (idle members
// return their free heap, see internal/idlemem).
func plinthSetsGCPercent(environ []string) bool {
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GOGC="); ok && v != "" {
			return false
		}
	}
	return true
}

func run(args []string, stderr io.Writer) int {
	cfg, err := parseFlags(args, os.Environ(), stderr)
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errVersion) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "plinth: %v\n", err)
		return 2
	}
	if !cfg.EnablePprof {
		// Nothing can read heap profiles then; the sampling's bucket table
		// alone holds ~1.4 MiB.
		runtime.MemProfileRate = 0
	}
	memCtx, stopMem := context.WithCancel(context.Background())
	defer stopMem()
	if plinthSetsGCPercent(os.Environ()) {
		go gcpercent.Run(memCtx, gcpercent.DefaultConfig)
	}
	srv, err := server.New(*cfg)
	if err != nil {
		fmt.Fprintf(stderr, "plinth: %v\n", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintf(stderr, "plinth: %v\n", err)
		return 1
	}
	go idlemem.Run(memCtx, idlemem.DefaultConfig, func(released uint64) {
		cfg.Logger.Debug("quiet after a burst: returned free heap memory to the OS", "bytes", released)
	})
	cfg.Logger.Info("plinth member started", "name", cfg.Name, "data-dir", cfg.DataDir, "client-addrs", strings.Join(srv.ClientAddrs(), ","))

	sigC := make(chan os.Signal, 1)
	signal.Notify(sigC, syscall.SIGINT, syscall.SIGTERM)
	select {
	case sig := <-sigC:
		cfg.Logger.Info("stopping", "signal", sig.String())
		srv.Stop()
		return 0
	case <-srv.Failed():
		err := srv.Err()
		srv.Stop()
		fmt.Fprintf(stderr, "plinth: %v\n", err)
		return 1
	}
}

var errVersion = errors.New("version printed")

// parseFlags reads the command line args and, for the flags it does not set,
// the ETCD_ variables of environ.
func parseFlags(args, environ []string, stderr io.Writer) (*server.Config, error) {
	fs := flag.NewFlagSet("plinth", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: plinth [flags]\n\nEvery flag can also come from its etcd environment variable, %s and its name\nin upper case with dashes as underscores (ETCD_INITIAL_CLUSTER); the command\nline wins.\n\n", envPrefix)
		fs.PrintDefaults()
	}
	var (
		name            = fs.String("name", "default", "human-readable name for this member")
		dataDir         = fs.String("data-dir", "plinth.data", "path to the data directory")
		listenClient    = fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated URLs to listen on for client traffic")
		advertiseClient = fs.String("advertise-client-urls", "http://127.0.0.1:2379", "comma-separated client URLs to advertise to the cluster")
		listenPeer      = fs.String("listen-peer-urls", "http://127.0.0.1:2380", "comma-separated URLs to listen on for peer traffic")
		advertisePeer   = fs.String("initial-advertise-peer-urls", "http://127.0.0.1:2380", "comma-separated peer URLs of this member to advertise to the cluster")
		initialCluster  = fs.String("initial-cluster", "", "initial cluster configuration for bootstrapping, name=url,... (default: this member alone, <name>=<initial-advertise-peer-urls>)")
		clusterState    = fs.String("initial-cluster-state", "new", "initial cluster state: new or existing")
		clusterToken    = fs.String("initial-cluster-token", "etcd-cluster", "initial cluster token, which makes the cluster's and members' IDs unique")
		join            = fs.String("join", "", "client URL of a member of a running cluster to join, with an empty data dir: added as a learner, promoted once caught up (the --initial-cluster flags are then unused)")
		maxRequestBytes = fs.Int("max-request-bytes", 1572864, "largest client request the server accepts, in bytes")
		logLevel        = fs.String("log-level", "info", "log level: debug, info, warn or error")
		heartbeat       = fs.Uint("heartbeat-interval", 100, "time (in milliseconds) of a heartbeat interval")
		election        = fs.Uint("election-timeout", 1000, "time (in milliseconds) for an election to timeout")
		snapshotCount   = fs.Uint64("snapshot-count", 10000, "number of applied Raft entries to keep in the log for lagging members")
		initialCorrupt  = fs.Bool("experimental-initial-corrupt-check", false, "compare this member's hash with its peers' before serving, and refuse to start on a difference (also --feature-gates=InitialCorruptCheck=true)")
		corruptCheck    = fs.Duration("corrupt-check-time", 0, "how often the leader compares every member's hash at its current revision; 0 turns it off")
		corruptCheckX   = fs.Duration("experimental-corrupt-check-time", 0, "the same as --corrupt-check-time (etcd's older name)")
		compactCheck    = fs.Duration("compact-hash-check-time", time.Minute, "how often the leader compares every member's hash at the latest compaction revision, when the compact hash check is on")
		compactCheckX   = fs.Duration("experimental-compact-hash-check-time", 0, "the same as --compact-hash-check-time (etcd's older name)")
		compactCheckOn  = fs.Bool("experimental-compact-hash-check-enabled", false, "turn the compact hash check on (also --feature-gates=CompactHashCheck=true)")
		featureGates    = fs.String("feature-gates", "", "etcd feature gates, name=true|false,...: InitialCorruptCheck and CompactHashCheck are read, others are accepted and ignored")
		quotaBytes      = fs.Int64("quota-backend-bytes", 0, "database size past which writes are refused and a NOSPACE alarm raised (0: 8 GiB)")
		compactionMode  = fs.String("auto-compaction-mode", "periodic", "interpret --auto-compaction-retention as a duration (periodic) or a number of revisions (revision)")
		compactionKeep  = fs.String("auto-compaction-retention", "0", "history the leader keeps by compacting on its own: a duration or hours (periodic), or revisions (revision); 0 turns it off")
		metricsURLs     = fs.String("listen-metrics-urls", "", "comma-separated URLs to serve /metrics, /health (and /debug/pprof/ with --enable-pprof) on, besides the client URLs")
		enablePprof     = fs.Bool("enable-pprof", false, "serve runtime profiling data at /debug/pprof/ on the client URLs and --listen-metrics-urls")
		readLease       = fs.Bool("read-lease", true, "let the leader answer linearizable reads without a quorum round for a while after one (less than an election timeout); turn off where a member's monotonic clock can stop while the others' runs on (a virtual machine its host freezes)")
		watchProgress   = fs.Duration("watch-progress-notify-interval", 10*time.Minute, "period of progress notifications to watchers that ask for them")
		watchProgressX  = fs.Duration("experimental-watch-progress-notify-interval", 0, "older spelling of --watch-progress-notify-interval")
		version         = fs.Bool("version", false, "print the version and exit")
	)
	defineEtcdOnlyFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := flagsFromEnv(fs, environ, stderr); err != nil {
		return nil, err
	}
	if err := checkEtcdOnlyFlags(fs, stderr); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags take the form --name=value)", fs.Arg(0))
	}
	if *version {
		fmt.Fprintf(stderr, "plinth, etcd API version %s\n", server.Version)
		return nil, errVersion
	}
	level, err := parseLevel(*logLevel)
	if err != nil {
		return nil, err
	}
	cfg := &server.Config{
		Name:                *name,
		DataDir:             *dataDir,
		InitialClusterState: *clusterState,
		InitialClusterToken: *clusterToken,
		Join:                *join,
		MaxRequestBytes:     *maxRequestBytes,
		HeartbeatInterval:   time.Duration(*heartbeat) * time.Millisecond,
		ElectionTimeout:     time.Duration(*election) * time.Millisecond,
		SnapshotCount:       *snapshotCount,
		QuotaBackendBytes:   *quotaBytes,
		Logger:              slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}
	gates, err := parseFeatureGates(*featureGates)
	if err != nil {
		return nil, err
	}
	cfg.CorruptCheck = server.CorruptCheck{Initial: *initialCorrupt || gates["InitialCorruptCheck"], Period: *corruptCheck}
	if *corruptCheckX != 0 {
		cfg.CorruptCheck.Period = *corruptCheckX
	}
	if *compactCheckOn || gates["CompactHashCheck"] {
		cfg.CorruptCheck.CompactPeriod = *compactCheck
		if *compactCheckX != 0 {
			cfg.CorruptCheck.CompactPeriod = *compactCheckX
		}
	}
	if cfg.AutoCompaction, err = server.ParseAutoCompaction(*compactionMode, *compactionKeep); err != nil {
		return nil, err
	}
	if cfg.ListenClientURLs, err = server.ParseURLs(*listenClient); err != nil {
		return nil, fmt.Errorf("--listen-client-urls: %w", err)
	}
	if cfg.AdvertiseClientURLs, err = server.ParseURLs(*advertiseClient); err != nil {
		return nil, fmt.Errorf("--advertise-client-urls: %w", err)
	}
	if cfg.ListenPeerURLs, err = server.ParseURLs(*listenPeer); err != nil {
		return nil, fmt.Errorf("--listen-peer-urls: %w", err)
	}
	if cfg.AdvertisePeerURLs, err = server.ParseURLs(*advertisePeer); err != nil {
		return nil, fmt.Errorf("--initial-advertise-peer-urls: %w", err)
	}
	if *metricsURLs != "" {
		if cfg.ListenMetricsURLs, err = server.ParseURLs(*metricsURLs); err != nil {
			return nil, fmt.Errorf("--listen-metrics-urls: %w", err)
		}
	}
	cfg.EnablePprof = *enablePprof
	cfg.WithoutReadLease = !*readLease
	cfg.WatchProgressNotifyInterval = *watchProgress
	if *watchProgressX != 0 {
		cfg.WatchProgressNotifyInterval = *watchProgressX
	}
	if *initialCluster == "" {
		*initialCluster = *name + "=" + *advertisePeer
	}
	if cfg.InitialCluster, err = server.ParseInitialCluster(*initialCluster); err != nil {
		return nil, fmt.Errorf("--initial-cluster: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// parseFeatureGates reads etcd's --feature-gates: name=bool pairs.
func parseFeatureGates(s string) (map[string]bool, error) {
	gates := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		on, err := strconv.ParseBool(value)
		if !ok || err != nil {
			return nil, fmt.Errorf("--feature-gates: %q is not name=true|false", part)
		}
		gates[strings.TrimSpace(name)] = on
	}
	return gates, nil
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level is %q, want debug, info, warn or error", s)
}

// envPrefix starts the environment variables etcd reads its flags from.
const envPrefix = "ETCD_"

// flagsFromEnv sets each flag of fs that the command line left unset from its
// variable in environ, as etcd does: ETCD_ and the flag's name in upper case,
// dashes as underscores (ETCD_INITIAL_CLUSTER_STATE). A flag given on the
// command line wins over its variable, and a variable that names no flag is
// reported, both on stderr, as etcd warns of them.
func flagsFromEnv(fs *flag.FlagSet, environ []string, stderr io.Writer) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, envPrefix) {
			env[k] = v
		}
	}
	if len(env) == 0 {
		return nil
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	known := map[string]bool{}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		key := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		known[key] = true
		v, ok := env[key]
		switch {
		case !ok || err != nil:
		case given[f.Name]:
			fmt.Fprintf(stderr, "plinth: ignoring %s: the command line sets --%s\n", key, f.Name)
		default:
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("invalid value %q for %s: %w", v, key, serr)
			}
		}
	})
	if err != nil {
		return err
	}
	var unknown []string
	for k := range env {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	for _, k := range unknown {
		fmt.Fprintf(stderr, "plinth: ignoring %s: no such flag\n", k)
	}
	return nil
}

// etcdOnlyFlag is an etcd flag that plinth takes so that an etcd command
// line starts it unchanged, though plinth has nothing for it to change:
// given the value etcd would be run with, it is accepted; given another,
// plinth either goes on and says why the value cannot matter, or, where
// going on would not be what the operator asked for (TLS), refuses to start.
type etcdOnlyFlag struct {
	name   string
	isBool bool
	// fine reports whether value asks for nothing plinth does not do.
	fine func(value string) bool
	// why explains what plinth does instead; refuse stops the start.
	why    string
	refuse bool
}

func isFalse(v string) bool { b, err := strconv.ParseBool(v); return err == nil && !b }
func isTrue(v string) bool  { b, err := strconv.ParseBool(v); return err == nil && b }
func isEmpty(v string) bool { return v == "" }
func anyValue(string) bool  { return true }

var etcdOnlyFlags = []etcdOnlyFlag{
	{name: "logger", fine: func(v string) bool { return v == "zap" }, why: "plinth has one logger, which writes to stderr"},
	{name: "log-outputs", fine: func(v string) bool { return v == "default" || v == "stderr" }, why: "plinth logs to stderr"},
	{name: "max-snapshots", fine: anyValue},
	{name: "max-wals", fine: anyValue},
	{name: "pre-vote", isBool: true, fine: isTrue, why: "PreVote is always on"},
	{name: "strict-reconfig-check", isBool: true, fine: isTrue, why: "membership changes are always checked"},
	{name: "enable-grpc-gateway", isBool: true, fine: isFalse, why: "plinth serves gRPC only, no JSON gateway"},
	{name: "experimental-enable-lease-checkpoint", isBool: true, fine: anyValue},
	{name: "experimental-enable-lease-checkpoint-persist", isBool: true, fine: anyValue},
	{name: "unsafe-no-fsync", isBool: true, fine: isFalse, why: "plinth always syncs what it acknowledges"},
	tlsFlag("cert-file", false),
	tlsFlag("key-file", false),
	tlsFlag("trusted-ca-file", false),
	tlsFlag("client-cert-auth", true),
	tlsFlag("auto-tls", true),
	tlsFlag("peer-cert-file", false),
	tlsFlag("peer-key-file", false),
	tlsFlag("peer-trusted-ca-file", false),
	tlsFlag("peer-client-cert-auth", true),
	tlsFlag("peer-auto-tls", true),
}

// tlsFlag is one of etcd's TLS flags: plinth refuses to start with it set,
// rather than serve in plain text what was meant to be encrypted.
func tlsFlag(name string, isBool bool) etcdOnlyFlag {
	fine := isEmpty
	if isBool {
		fine = isFalse
	}
	return etcdOnlyFlag{name: name, isBool: isBool, fine: fine, why: "TLS is not supported yet", refuse: true}
}

// defineEtcdOnlyFlags adds etcdOnlyFlags to fs; checkEtcdOnlyFlags reads
// back the ones given.
func defineEtcdOnlyFlags(fs *flag.FlagSet) {
	for _, f := range etcdOnlyFlags {
		usage := "etcd's flag, accepted; no effect in plinth"
		if f.refuse {
			usage = "etcd's flag; " + f.why + ": plinth refuses to start with it set"
		}
		if f.isBool {
			fs.Bool(f.name, false, usage)
		} else {
			fs.String(f.name, "", usage)
		}
	}
}

// checkEtcdOnlyFlags refuses, or notes on stderr, each etcd-only flag given
// with a value that plinth cannot honour.
func checkEtcdOnlyFlags(fs *flag.FlagSet, stderr io.Writer) error {
	var err error
	fs.Visit(func(given *flag.Flag) {
		i := slices.IndexFunc(etcdOnlyFlags, func(f etcdOnlyFlag) bool { return f.name == given.Name })
		if i < 0 || err != nil {
			return
		}
		f, v := etcdOnlyFlags[i], given.Value.String()
		switch {
		case f.fine(v):
		case f.refuse:
			err = fmt.Errorf("--%s=%s: %s", f.name, v, f.why)
		default:
			fmt.Fprintf(stderr, "plinth: --%s=%s has no effect: %s\n", f.name, v, f.why)
		}
	})
	return err
}
