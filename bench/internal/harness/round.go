package harness

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/plinthdb/plinth/bench/internal/benchout"
	"github.com/plinthdb/plinth/bench/internal/proccpu"
)

// RangeKey is the key that range loads read; Prepare puts it before the load starts.
const RangeKey = "benchkey"

// Load is one kind of benchmark request stream.
type Load struct {
	Name string   // short name for tables: "put", "put-rand", "txn-put", "range-l", ...
	Args []string // benchmark tool subcommand and its flags, without --total
	// Total is the requests per round (events delivered, for the watch loads,
	// or watchers created): what server CPU per request divides by.
	Total int

	// Prepare, when set, runs on the fresh server before the CPU reading that starts
	// the round (for example to put the key a range load reads).
	Prepare func(ctx context.Context, c *Cluster) error

	// Watch marks a load that needs the Watch service, which the floor does not
	// serve.
	Watch bool
	// run, when set, is the load instead of the benchmark tool: it fills
	// res.Report (and what else it measures) while the CPU is read around it.
	run func(ctx context.Context, c *Cluster, res *Result) error
}

// PutLoad writes total keys of keySize bytes with values of valSize bytes, keys
// drawn from keySpace distinct keys, in order when sequential (all creates when
// total <= keySpace), at random otherwise (the tool's rand.Intn: total random puts
// over keySpace keys leave about keySpace*(1-exp(-total/keySpace)) distinct keys, the
// rest of the puts overwrite).
func PutLoad(total, keySize, valSize, keySpace int, sequential bool) Load {
	args := []string{"put",
		"--key-size=" + strconv.Itoa(keySize),
		"--val-size=" + strconv.Itoa(valSize),
		"--key-space-size=" + strconv.Itoa(keySpace),
	}
	name := "put-rand"
	if sequential {
		args = append(args, "--sequential-keys")
		name = "put"
	}
	return Load{Name: name, Args: args, Total: total}
}

// TxnPutLoad sends total txns of ops puts each (no comparisons), keys of keySize
// bytes and values of valSize bytes. The tool takes keys in order over keySpace
// keys (key number (i*ops+j) mod keySpace), so after the first keySpace puts every
// put overwrites.
func TxnPutLoad(total, keySize, valSize, keySpace, ops int) Load {
	return Load{Name: "txn-put", Total: total, Args: []string{"txn-put",
		"--key-size=" + strconv.Itoa(keySize),
		"--val-size=" + strconv.Itoa(valSize),
		"--key-space-size=" + strconv.Itoa(keySpace),
		"--txn-ops=" + strconv.Itoa(ops),
	}}
}

// GuardedUpdateLoad runs total software transactions of the tool's stm
// command, each Kubernetes' update in miniature: read one key of keySpace (a
// linearizable Range; the tool's keys are 16 bytes), then write it back with
// a value of valSize bytes in a Txn guarded by the key's mod revision as read
// (repeatable reads isolation). A txn that finds its key changed meanwhile
// is run again, so a request here is at least a Range and a Txn.
func GuardedUpdateLoad(total, valSize, keySpace int) Load {
	return Load{Name: "stm", Total: total, Args: []string{"stm",
		"--isolation=r",
		"--keys=" + strconv.Itoa(keySpace),
		"--keys-per-txn=1",
		"--txn-wr-percent=100",
		"--val-size=" + strconv.Itoa(valSize),
	}}
}

// LeaseKeepAliveLoad sends total lease keep-alives: each of the tool's clients
// grants one lease of TTL 100s, then sends keep-alives for it, one at a time,
// each on a new LeaseKeepAlive stream (clientv3's KeepAliveOnce). The grants (one
// per client) are part of the round.
func LeaseKeepAliveLoad(total int) Load {
	return Load{Name: "lease-keepalive", Total: total, Args: []string{"lease-keepalive"}}
}

// RangeLoad reads RangeKey total times, which Prepare first puts with a value of
// valSize bytes. consistency is "l" (linearizable) or "s" (serializable).
func RangeLoad(total, valSize int, consistency string) Load {
	return Load{
		Name:  "range-" + consistency,
		Args:  []string{"range", RangeKey, "--consistency=" + consistency},
		Total: total,
		Prepare: func(ctx context.Context, c *Cluster) error {
			cli, err := c.Client()
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err = cli.Put(ctx, RangeKey, strings.Repeat("v", valSize))
			if err != nil {
				return err
			}
			// A linearizable Get on each member returns once that member has applied
			// the put, so no serializable range of the load misses the key.
			if len(c.Members) > 1 {
				for _, m := range c.Members {
					if err := m.get(ctx, RangeKey); err != nil {
						return fmt.Errorf("member %s: %w", m.Name, err)
					}
				}
			}
			return nil
		},
	}
}

// Client is how the benchmark tool is run: its executable and the global flags
// shared by every load.
type Client struct {
	Bin     string
	Clients int // --clients: concurrent gRPC clients
	Conns   int // --conns: gRPC connections they share
}

// Result is what one round measured.
type Result struct {
	Server    string
	Load      string
	Requests  int // requests sent (the load's total)
	Report    benchout.Report
	ServerCPU time.Duration // utime+stime of all the server's members during the load
	// MemberCPU is each member's utime+stime during the load, in member order; its
	// sum is ServerCPU.
	MemberCPU []time.Duration
	ClientCPU time.Duration // benchmark tool utime+stime (its whole run)
	Output    string        // benchmark tool standard output
	// ResidentBytes is each member's resident memory (VmRSS) at the end of
	// the load, in member order, for the loads that read it (watch-idle).
	ResidentBytes []int64
}

// Resident is the members' resident memory summed, or 0 when the load did not
// read it.
func (r Result) Resident() int64 {
	var sum int64
	for _, b := range r.ResidentBytes {
		sum += b
	}
	return sum
}

// ServerCPUPerRequest is the server's CPU time divided by the requests sent.
func (r Result) ServerCPUPerRequest() time.Duration {
	if r.Requests == 0 {
		return 0
	}
	return r.ServerCPU / time.Duration(r.Requests)
}

// ClientCPUPerRequest is the benchmark tool's CPU time divided by the requests sent.
func (r Result) ClientCPUPerRequest() time.Duration {
	if r.Requests == 0 {
		return 0
	}
	return r.ClientCPU / time.Duration(r.Requests)
}

// Run runs load against the running server c, its connections spread over all the
// members' endpoints (the tool dials them in turn, one endpoint per connection), and
// measures it. It fails when the tool fails, prints no summary, or a member exits
// during the load; requests that failed are reported in Result.Report.Errors.
func (cl Client) Run(ctx context.Context, c *Cluster, load Load) (Result, error) {
	name := c.Spec.Name
	res := Result{Server: name, Load: load.Name, Requests: load.Total}
	if load.Prepare != nil {
		if err := load.Prepare(ctx, c); err != nil {
			return res, fmt.Errorf("harness: prepare %s on %s: %w", load.Name, name, err)
		}
	}
	if load.run != nil {
		return runOwn(ctx, c, load, res)
	}
	args := []string{
		"--endpoints=" + strings.Join(c.Endpoints(), ","),
		"--clients=" + strconv.Itoa(cl.Clients),
		"--conns=" + strconv.Itoa(cl.Conns),
		"--precise",
	}
	args = append(args, load.Args...)
	if !load.Watch {
		// The watch loads have no --total: their sizes are in their Args.
		args = append(args, "--total="+strconv.Itoa(load.Total))
	}

	var stdout bytes.Buffer
	stderr := &tailBuffer{max: 256 << 10}
	cmd := exec.CommandContext(ctx, cl.Bin, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	killWithParent(cmd)

	var runErr error
	if err := c.measure(load.Name, &res, func() { runErr = cmd.Run() }); err != nil {
		return res, err
	}
	if cmd.ProcessState != nil {
		res.ClientCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	res.Output = stdout.String()
	if runErr != nil {
		return res, fmt.Errorf("harness: benchmark %s on %s: %w\n--- benchmark stderr (tail) ---\n%s",
			load.Name, name, runErr, toolErrors(stderr.String(), 20))
	}
	rep, err := benchout.Parse(res.Output)
	res.Report = rep
	if err != nil {
		return res, fmt.Errorf("harness: benchmark %s on %s: %w (errors: %v)", load.Name, name, err, rep.Errors)
	}
	return res, nil
}

// runOwn runs a load of the harness's own (load.run) against c, with the
// members' CPU read around it, as Run does around the tool.
func runOwn(ctx context.Context, c *Cluster, load Load, res Result) (Result, error) {
	var runErr error
	if err := c.measure(load.Name, &res, func() { runErr = load.run(ctx, c, &res) }); err != nil {
		return res, err
	}
	if runErr != nil {
		return res, fmt.Errorf("harness: %s on %s: %w", load.Name, c.Spec.Name, runErr)
	}
	return res, nil
}

// measure runs load, reading each member's CPU time before and after it into
// res; it fails when a reading fails or a member exited meanwhile.
func (c *Cluster) measure(load string, res *Result, run func()) error {
	before, err := c.cpuTicks()
	if err != nil {
		return err
	}
	run()
	after, err := c.cpuTicks()
	if err != nil {
		return fmt.Errorf("harness: during %s: %w", load, err)
	}
	if s := c.exited(); s != nil {
		return fmt.Errorf("harness: %s member %s exited during %s: %v\n%s",
			c.Spec.Name, s.Name, load, s.waitErr, c.LogTail(2000))
	}
	for i := range before {
		d := proccpu.TicksToDuration(after[i] - before[i])
		res.MemberCPU = append(res.MemberCPU, d)
		res.ServerCPU += d
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// toolErrors returns the last n lines of the benchmark tool's standard error that are
// not gRPC's connection chatter: the tool logs every connection at INFO, with JSON
// dumps of resolver state, and its progress bar.
func toolErrors(stderr string, n int) string {
	var keep []string
	for _, line := range strings.Split(stderr, "\n") {
		if i := strings.LastIndexByte(line, '\r'); i >= 0 {
			line = line[i+1:]
		}
		switch {
		case strings.TrimSpace(line) == "",
			strings.Contains(line, " INFO: "),
			strings.HasPrefix(line, " "), strings.HasPrefix(line, "\t"),
			strings.HasPrefix(line, "{"), strings.HasPrefix(line, "}"),
			strings.Contains(line, " p/s"): // progress bar
			continue
		}
		keep = append(keep, line)
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}
