package election

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	le "github.com/plinthdb/plinth/election"
	"github.com/plinthdb/plinth/internal/testmember"
)

var roundsFlag = flag.Int("election.rounds", 1, "how many times TestFailover kills and pauses the leading elector and kills the plinth leader")

// plinthBin is the plinth binary built by TestMain.
var plinthBin string

// The timing of every elector, and what a loaded machine may add to a
// handover beyond the lease (the server's expiry tick, a revoke through
// Raft, watch delivery, the next candidate's read).
const (
	leaseDuration = 3 * time.Second
	renewDeadline = 2 * time.Second
	retryPeriod   = 500 * time.Millisecond
	slack         = 5 * time.Second

	electionPrefix = "/failover"
	logKey         = "failover/log"
)

// An elector process is the test binary run with these variables set: its
// identity and the endpoints of the cluster.
const (
	identityEnv  = "PLINTH_ELECTION_TEST_IDENTITY"
	endpointsEnv = "PLINTH_ELECTION_TEST_ENDPOINTS"
)

func TestMain(m *testing.M) {
	if id := os.Getenv(identityEnv); id != "" {
		os.Exit(runElector(id, strings.Split(os.Getenv(endpointsEnv), ",")))
	}
	flag.Parse()
	// ELECTION_TARGET_BIN runs the tests against another server that takes
	// etcd's flags, e.g. the reference etcd that bench builds (bench/out/etcd).
	bin, cleanup, err := testmember.Binary("ELECTION_TARGET_BIN")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	plinthBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// event is one line an elector process prints on its standard output.
type event struct {
	Ev     string `json:"ev"`               // leader, leading, write, fenced, error, stopped, exit
	Leader string `json:"leader,omitempty"` // of a leader event
	Token  int64  `json:"token,omitempty"`  // the term of leading, write, fenced, error
	Rev    int64  `json:"rev,omitempty"`    // the revision of a write
	Err    string `json:"err,omitempty"`

	from string    // the elector's identity, set by the reader
	at   time.Time // when the test read it
}

// runElector is an elector process: it campaigns until SIGTERM, and while it
// leads it writes logKey, fenced, every 50ms. Like a careless leader it makes
// one last write after its term's context ended.
func runElector(id string, endpoints []string) int {
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(ev event) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(ev)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintf(os.Stderr, "elector %s: %v\n", id, err)
		return 1
	}
	defer cli.Close()
	write := func(lead *le.Leadership, seq int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := lead.Put(ctx, logKey, fmt.Sprintf("%s %d %d", id, lead.Token(), seq))
		switch {
		case err == nil:
			emit(event{Ev: "write", Token: lead.Token(), Rev: resp.Header.Revision})
		case errors.Is(err, le.ErrFenced):
			emit(event{Ev: "fenced", Token: lead.Token()})
		default:
			emit(event{Ev: "error", Token: lead.Token(), Err: err.Error()})
		}
	}
	e, err := le.New(cli, le.Config{
		Prefix: electionPrefix, Identity: id,
		LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod,
		ReleaseOnCancel: true,
		Callbacks: le.Callbacks{
			OnStartedLeading: func(ctx context.Context, lead *le.Leadership) {
				emit(event{Ev: "leading", Token: lead.Token()})
				for seq := 0; ; seq++ {
					over := ctx.Err() != nil
					write(lead, seq)
					if over {
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
			},
			OnStoppedLeading: func() { emit(event{Ev: "stopped"}) },
			OnNewLeader:      func(leader string) { emit(event{Ev: "leader", Leader: leader}) },
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "elector %s: %v\n", id, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	_ = e.Run(ctx)
	emit(event{Ev: "exit"})
	return 0
}

// recorder keeps every event of every elector, in the order the test read
// them.
type recorder struct {
	mu     sync.Mutex
	events []event
}

func (r *recorder) add(ev event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) all() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// last returns the last event read that matches (the zero event if none).
func (r *recorder) last(match func(event) bool) event {
	evs := r.all()
	for i := len(evs) - 1; i >= 0; i-- {
		if match(evs[i]) {
			return evs[i]
		}
	}
	return event{}
}

// wait returns the first event read at or after since that matches, waiting
// up to d for it.
func (r *recorder) wait(t *testing.T, since time.Time, d time.Duration, what string, match func(event) bool) event {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		for _, ev := range r.all() {
			if !ev.at.Before(since) && match(ev) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// elector is one elector process.
type elector struct {
	id     string
	cmd    *exec.Cmd
	exited chan struct{} // closed once its output is read and it is reaped
}

// startElector runs an elector process with identity id over endpoints; its
// events go to rec. It is killed, if still running, when the test ends.
func startElector(t *testing.T, rec *recorder, id string, endpoints []string) *elector {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), identityEnv+"="+id, endpointsEnv+"="+strings.Join(endpoints, ","))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &elector{id: id, cmd: cmd, exited: make(chan struct{})}
	go func() {
		defer close(e.exited)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				continue // not ours (a library's stray line)
			}
			ev.from, ev.at = id, time.Now()
			rec.add(ev)
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-e.exited
	})
	return e
}

func (e *elector) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := e.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("elector %s (pid %d): %v: %v", e.id, e.cmd.Process.Pid, sig, err)
	}
}

// stop ends the elector with SIGTERM, as an orchestrator would, and waits for
// it to exit.
func (e *elector) stop(t *testing.T) {
	e.signal(t, syscall.SIGTERM)
	select {
	case <-e.exited:
	case <-time.After(15 * time.Second):
		t.Errorf("elector %s did not exit within 15s of SIGTERM", e.id)
	}
}

// TestFailover runs three elector processes against a three-member cluster,
// kills and pauses the leading elector and kills the plinth leader, and
// checks that leadership moves within the lease and that fencing holds.
func TestFailover(t *testing.T) {
	ctx := t.Context()
	c := testmember.NewCluster(t, plinthBin, 3)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eps := c.Endpoints()
	rec := &recorder{}
	electors := map[string]*elector{}
	started := 0
	spawn := func() {
		id := fmt.Sprintf("e%d", started)
		started++
		electors[id] = startElector(t, rec, id, eps)
	}
	for range 3 {
		spawn()
	}
	leading := rec.wait(t, time.Time{}, 30*time.Second, "a first leader", func(ev event) bool { return ev.Ev == "leading" })
	t.Logf("%s leads, token %d", leading.from, leading.Token)
	isLeadingOtherThan := func(id string) func(event) bool {
		return func(ev event) bool { return ev.Ev == "leading" && ev.from != id }
	}
	handover := leaseDuration + slack

	for round := range *roundsFlag {
		// kill -9 the leading elector: the next one takes over once its lease ran out.
		victim := electors[leading.from]
		start := time.Now()
		victim.signal(t, syscall.SIGKILL)
		<-victim.exited
		delete(electors, victim.id)
		leading = rec.wait(t, start, handover, "a new leader after kill -9 of "+victim.id, isLeadingOtherThan(victim.id))
		t.Logf("round %d: kill -9 of %s: %s leads after %v, token %d", round, victim.id, leading.from,
			leading.at.Sub(start).Round(time.Millisecond), leading.Token)
		spawn()

		// SIGSTOP the leading elector: another takes over; once resumed,
		// the paused one's writes are refused, and it steps down.
		paused := electors[leading.from]
		pausedToken := leading.Token
		start = time.Now()
		paused.signal(t, syscall.SIGSTOP)
		leading = rec.wait(t, start, handover, "a new leader while "+paused.id+" is paused", isLeadingOtherThan(paused.id))
		t.Logf("round %d: SIGSTOP of %s: %s leads after %v, token %d", round, paused.id, leading.from,
			leading.at.Sub(start).Round(time.Millisecond), leading.Token)
		resumed := time.Now()
		paused.signal(t, syscall.SIGCONT)
		rec.wait(t, resumed, 10*time.Second, "a refused write of the resumed "+paused.id, func(ev event) bool {
			return ev.from == paused.id && ev.Ev == "fenced" && ev.Token == pausedToken
		})
		rec.wait(t, resumed, 10*time.Second, paused.id+" steps down", func(ev event) bool {
			return ev.from == paused.id && ev.Ev == "stopped"
		})

		// kill -9 the plinth leader: the electors carry on over the others.
		m, _, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
		w := rec.wait(t, killed, 20*time.Second, "a write after the plinth leader "+m.Name()+" was killed", func(ev event) bool {
			return ev.Ev == "write"
		})
		t.Logf("round %d: plinth leader %s killed; %s wrote %v later", round, m.Name(), w.from, w.at.Sub(killed).Round(time.Millisecond))
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// The plinth leader's death may have moved leadership too (a
		// renewal that failed for the renew deadline): the next round
		// starts from whoever leads once writes flow again.
		restarted := time.Now()
		w = rec.wait(t, restarted, 20*time.Second, "a write after "+m.Name()+" restarted", func(ev event) bool { return ev.Ev == "write" })
		leading = rec.last(func(ev event) bool { return ev.Ev == "leading" && ev.from == w.from && ev.Token == w.Token })
	}

	var wg sync.WaitGroup
	for _, e := range electors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.stop(t)
		}()
	}
	wg.Wait()
	checkFencing(t, c, rec.all())
}

// checkFencing replays the cluster's whole history and checks that every
// write of logKey was applied while the term it was made under led: its
// token was the create revision of the first-created election key alive
// then. It also checks that every write an elector was told succeeded is in
// the history.
func checkFencing(t *testing.T, c *testmember.Cluster, events []event) {
	t.Helper()
	cli, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	end, err := cli.Get(ctx, "failover/none")
	if err != nil {
		t.Fatal(err)
	}
	var violations []string
	live := map[string]int64{}   // election keys alive -> create revision
	written := map[int64]int64{} // revision of a write of logKey -> its token
	terms := map[int64]bool{}    // tokens that led at some revision
	leader := func() int64 {
		first := int64(0)
		for _, rev := range live {
			if first == 0 || rev < first {
				first = rev
			}
		}
		return first
	}
	wch := cli.Watch(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(1))
	for last := int64(0); last < end.Header.Revision; {
		wr, ok := <-wch
		if !ok || wr.Err() != nil {
			t.Fatalf("watch of the history: %v (at revision %d of %d)", wr.Err(), last, end.Header.Revision)
		}
		for _, ev := range wr.Events {
			last = ev.Kv.ModRevision
			key := string(ev.Kv.Key)
			switch {
			case strings.HasPrefix(key, electionPrefix+"/"):
				if ev.Type == clientv3.EventTypeDelete {
					delete(live, key)
				} else {
					live[key] = ev.Kv.CreateRevision
				}
				if l := leader(); l != 0 {
					terms[l] = true
				}
			case ev.Type == clientv3.EventTypePut && key == logKey:
				f := strings.Fields(string(ev.Kv.Value))
				if len(f) != 3 {
					t.Fatalf("%s = %q at revision %d", logKey, ev.Kv.Value, ev.Kv.ModRevision)
				}
				token, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					t.Fatalf("%s = %q at revision %d", logKey, ev.Kv.Value, ev.Kv.ModRevision)
				}
				written[ev.Kv.ModRevision] = token
				if l := leader(); l != token {
					violations = append(violations, fmt.Sprintf("write %q applied at revision %d under term %d, while term %d led", ev.Kv.Value, ev.Kv.ModRevision, token, l))
				}
			}
		}
	}
	acked, fenced := 0, 0
	for _, ev := range events {
		switch ev.Ev {
		case "write":
			acked++
			if token, ok := written[ev.Rev]; !ok || token != ev.Token {
				violations = append(violations, fmt.Sprintf("%s was told its write under term %d succeeded at revision %d; the history has token %d there (present: %v)",
					ev.from, ev.Token, ev.Rev, token, ok))
			}
		case "fenced":
			fenced++
		}
	}
	t.Logf("history: %d terms, %d writes, %d acknowledged to electors, %d refused as fenced", len(terms), len(written), acked, fenced)
	if len(violations) > 0 {
		t.Fatalf("fencing violated:\n%s", strings.Join(violations, "\n"))
	}
}
