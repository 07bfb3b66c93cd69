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
	Name  string   // short name for tables: "put", "range-l", "range-s"
	Args  []string // benchmark tool subcommand and its flags, without --total
	Total int      // requests per round

	// Prepare, when set, runs on the fresh server before the CPU reading that starts
	// the round (for example to put the key a range load reads).
	Prepare func(ctx context.Context, s *Server) error
}

// PutLoad writes total keys of keySize bytes with values of valSize bytes, keys
// drawn from keySpace distinct keys, in order when sequential.
func PutLoad(total, keySize, valSize, keySpace int, sequential bool) Load {
	args := []string{"put",
		"--key-size=" + strconv.Itoa(keySize),
		"--val-size=" + strconv.Itoa(valSize),
		"--key-space-size=" + strconv.Itoa(keySpace),
	}
	if sequential {
		args = append(args, "--sequential-keys")
	}
	return Load{Name: "put", Args: args, Total: total}
}

// RangeLoad reads RangeKey total times, which Prepare first puts with a value of
// valSize bytes. consistency is "l" (linearizable) or "s" (serializable).
func RangeLoad(total, valSize int, consistency string) Load {
	return Load{
		Name:  "range-" + consistency,
		Args:  []string{"range", RangeKey, "--consistency=" + consistency},
		Total: total,
		Prepare: func(ctx context.Context, s *Server) error {
			cli, err := s.Client()
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err = cli.Put(ctx, RangeKey, strings.Repeat("v", valSize))
			return err
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
	ServerCPU time.Duration // server utime+stime during the load
	ClientCPU time.Duration // benchmark tool utime+stime (its whole run)
	Output    string        // benchmark tool standard output
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

// Run runs load against the running server s and measures it. It fails when the
// tool fails, prints no summary, or the server exits during the load; requests that
// failed are reported in Result.Report.Errors.
func (c Client) Run(ctx context.Context, s *Server, load Load) (Result, error) {
	res := Result{Server: s.Spec.Name, Load: load.Name, Requests: load.Total}
	if load.Prepare != nil {
		if err := load.Prepare(ctx, s); err != nil {
			return res, fmt.Errorf("harness: prepare %s on %s: %w", load.Name, s.Spec.Name, err)
		}
	}
	args := []string{
		"--endpoints=" + s.Endpoint,
		"--clients=" + strconv.Itoa(c.Clients),
		"--conns=" + strconv.Itoa(c.Conns),
		"--precise",
	}
	args = append(args, load.Args...)
	args = append(args, "--total="+strconv.Itoa(load.Total))

	var stdout bytes.Buffer
	stderr := &tailBuffer{max: 256 << 10}
	cmd := exec.CommandContext(ctx, c.Bin, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second
	killWithParent(cmd)

	before, err := proccpu.Ticks(s.Pid())
	if err != nil {
		return res, err
	}
	runErr := cmd.Run()
	after, err := proccpu.Ticks(s.Pid())
	if err != nil {
		return res, fmt.Errorf("harness: %s during %s: %w", s.Spec.Name, load.Name, err)
	}
	if s.Exited() {
		return res, fmt.Errorf("harness: %s exited during %s: %v\n--- server log (tail) ---\n%s",
			s.Spec.Name, load.Name, s.waitErr, s.LogTail(2000))
	}
	res.ServerCPU = proccpu.TicksToDuration(after - before)
	if cmd.ProcessState != nil {
		res.ClientCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	res.Output = stdout.String()
	if runErr != nil {
		return res, fmt.Errorf("harness: benchmark %s on %s: %w\n--- benchmark stderr (tail) ---\n%s",
			load.Name, s.Spec.Name, runErr, toolErrors(stderr.String(), 20))
	}
	rep, err := benchout.Parse(res.Output)
	res.Report = rep
	if err != nil {
		return res, fmt.Errorf("harness: benchmark %s on %s: %w (errors: %v)", load.Name, s.Spec.Name, err, rep.Errors)
	}
	return res, nil
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
