package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// JitterFactor bounds the retry period from above: a failed campaign waits
// RetryPeriod times a random factor in [1, JitterFactor) before it tries
// again, and RenewDeadline must exceed RetryPeriod*JitterFactor.
const JitterFactor = 1.2

// The timing a zero Config field gets: client-go's usual values.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Config configures an Elector.
type Config struct {
	// Prefix names the election: candidates' keys are Prefix + "/" +
	// lease ID in hex. Every replica of one application uses the same.
	Prefix string
	// Identity names this candidate; it is the value of its key and what
	// OnNewLeader reports. Each replica needs its own (e.g. host name + pid).
	Identity string
	// Name is the name label of the metric; Prefix when empty.
	Name string

	// LeaseDuration is the TTL of the candidate's lease: how long other
	// replicas wait after a leader vanishes without releasing.
	LeaseDuration time.Duration
	// RenewDeadline is how long a leader keeps leading without a
	// successful renewal before it steps down. Less than LeaseDuration.
	RenewDeadline time.Duration
	// RetryPeriod is how often a candidate renews its lease, and how long
	// it waits before a failed campaign is tried again.
	RetryPeriod time.Duration

	// ReleaseOnCancel makes a leader revoke its lease when Run's context
	// is cancelled (after OnStartedLeading returned), so that another
	// replica takes over at once. Without it the lease runs out.
	ReleaseOnCancel bool

	Callbacks Callbacks

	// Registerer, when set, gets the gauge plinth_election_is_leader. Many
	// electors may share one registerer if their Names differ.
	Registerer prometheus.Registerer
	// Logger gets the elector's log; nothing is logged when nil.
	Logger *slog.Logger
}

// Callbacks are what the elector calls. All run on Run's goroutine but
// OnStartedLeading, which runs on one of its own; OnNewLeader and
// OnStoppedLeading must return quickly.
type Callbacks struct {
	// OnStartedLeading runs when this candidate becomes leader. ctx is
	// cancelled when the term ends; lead carries the term's fencing token.
	// Run waits for it to return before it campaigns again or returns.
	OnStartedLeading func(ctx context.Context, lead *Leadership)
	// OnStoppedLeading is called when a term ends: at once when
	// leadership is lost, after OnStartedLeading returned when Run's
	// context is cancelled.
	OnStoppedLeading func()
	// OnNewLeader is called with the identity of each new leader this
	// candidate observes, its own included.
	OnNewLeader func(identity string)
}

// Validate fills the zero durations with the defaults and checks that
// LeaseDuration > RenewDeadline > RetryPeriod*JitterFactor.
func (c *Config) Validate() error {
	if c.Prefix == "" {
		return errors.New("election: Prefix is empty")
	}
	if c.Identity == "" {
		return errors.New("election: Identity is empty")
	}
	if c.Callbacks.OnStartedLeading == nil {
		return errors.New("election: Callbacks.OnStartedLeading is nil")
	}
	if c.Name == "" {
		c.Name = c.Prefix
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = DefaultLeaseDuration
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = DefaultRenewDeadline
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = DefaultRetryPeriod
	}
	switch {
	case c.RetryPeriod < 0:
		return fmt.Errorf("election: RetryPeriod %v is negative", c.RetryPeriod)
	case c.LeaseDuration <= c.RenewDeadline:
		return fmt.Errorf("election: LeaseDuration %v must be greater than RenewDeadline %v", c.LeaseDuration, c.RenewDeadline)
	case float64(c.RenewDeadline) <= JitterFactor*float64(c.RetryPeriod):
		return fmt.Errorf("election: RenewDeadline %v must be greater than RetryPeriod %v times %v", c.RenewDeadline, c.RetryPeriod, JitterFactor)
	}
	return nil
}

// Elector campaigns for one candidate. Create it with New, run it with Run.
type Elector struct {
	cli       *clientv3.Client
	cfg       Config
	keyPrefix string // Prefix + "/"
	ttl       int64  // lease TTL in seconds
	isLeader  prometheus.Gauge
	log       *slog.Logger
	started   atomic.Bool

	// mu guards the state below; it is never held across I/O or a callback.
	mu        sync.Mutex
	lead      *Leadership // the current term's, nil when not leading
	renewed   time.Time   // when the last successful renewal was sent
	lostAt    time.Time   // when leadership was lost while OnStartedLeading still runs; zero otherwise
	lostWhy   error
	leader    string // the last leader observed
	callbacks int    // OnStartedLeading calls still running (0 or 1)
}

// isLeaderOpts describes the gauge vector registered on each registerer;
// electors sharing a registerer share the vector.
var isLeaderOpts = prometheus.GaugeOpts{
	Name: "plinth_election_is_leader",
	Help: "1 while this process leads the election of the name label, 0 otherwise.",
}

// New returns an elector of cli for cfg. The client stays the caller's.
func New(cli *clientv3.Client, cfg Config) (*Elector, error) {
	if cli == nil {
		return nil, errors.New("election: nil client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Elector{
		cli:       cli,
		cfg:       cfg,
		keyPrefix: strings.TrimSuffix(cfg.Prefix, "/") + "/",
		ttl:       int64((cfg.LeaseDuration + time.Second - 1) / time.Second),
		log:       cfg.Logger,
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	vec := prometheus.NewGaugeVec(isLeaderOpts, []string{"name"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(vec); err != nil {
			are, ok := err.(prometheus.AlreadyRegisteredError)
			if !ok {
				return nil, fmt.Errorf("election: register metrics: %w", err)
			}
			if vec, ok = are.ExistingCollector.(*prometheus.GaugeVec); !ok {
				return nil, fmt.Errorf("election: register metrics: %w", err)
			}
		}
	}
	e.isLeader = vec.WithLabelValues(cfg.Name)
	e.isLeader.Set(0)
	return e, nil
}

// IsLeader reports whether this candidate leads now, as far as it knows.
func (e *Elector) IsLeader() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lead != nil
}

// Leadership returns the current term, or nil when not leading.
func (e *Elector) Leadership() *Leadership {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lead
}

// Leader returns the identity of the last leader this candidate observed, ""
// before it observed any.
func (e *Elector) Leader() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leader
}

// Check is a health check: it fails while leadership was lost but
// OnStartedLeading has not returned, and while this candidate leads but its
// lease was last renewed longer than LeaseDuration ago.
func (e *Elector) Check() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	if e.callbacks > 0 && !e.lostAt.IsZero() {
		return fmt.Errorf("election %s: leadership lost %v ago (%v), but OnStartedLeading has not returned",
			e.cfg.Name, now.Sub(e.lostAt).Round(time.Millisecond), e.lostWhy)
	}
	if e.lead != nil && now.Sub(e.renewed) > e.cfg.LeaseDuration {
		return fmt.Errorf("election %s: leading, but the lease was last renewed %v ago, more than the lease duration %v",
			e.cfg.Name, now.Sub(e.renewed).Round(time.Millisecond), e.cfg.LeaseDuration)
	}
	return nil
}

// Run campaigns until ctx is cancelled, leading whenever elected, and
// returns once the last term ended and OnStartedLeading returned. Errors of
// the server are retried; Run may be called once.
func (e *Elector) Run(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("election: Run called twice")
	}
	for ctx.Err() == nil {
		if err := e.campaign(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("election: campaign failed; retrying", "prefix", e.cfg.Prefix, "err", err)
			pause := time.Duration(float64(e.cfg.RetryPeriod) * (1 + (JitterFactor-1)*rand.Float64()))
			sleep(ctx, pause)
		}
	}
	return nil
}

// errKeyDeleted ends a term whose key was deleted by someone else.
var errKeyDeleted = errors.New("election: the candidate's key was deleted")

// campaign runs one candidacy: a lease and a key, waiting in line, leading.
// It returns nil when the candidacy ended as it should (a lost term, a
// cancelled ctx) and an error when the server could not be reached.
func (e *Elector) campaign(ctx context.Context) error {
	sent := time.Now()
	grant, err := e.cli.Grant(ctx, e.ttl)
	if err != nil {
		return fmt.Errorf("election: grant lease: %w", err)
	}
	lease := grant.ID
	if grant.TTL > e.ttl {
		e.log.Info("election: the server raised the lease TTL to its minimum", "asked", e.ttl, "got", grant.TTL)
	}
	key := fmt.Sprintf("%s%x", e.keyPrefix, int64(lease))
	put, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, e.cfg.Identity, clientv3.WithLease(lease))).
		Commit()
	if err == nil && !put.Succeeded {
		err = fmt.Errorf("key %s exists already", key) // a lease ID is new: cannot happen
	}
	if err != nil {
		e.revoke(lease)
		return fmt.Errorf("election: put %s: %w", key, err)
	}
	token := put.Header.Revision

	// The renewer outlives ctx: a leader renews until OnStartedLeading
	// returned. It sends at most one error on lost and returns.
	renewCtx, stopRenew := context.WithCancel(context.WithoutCancel(ctx))
	lost := make(chan error, 1)
	// Before the renewer runs, and so before this candidate can lead: a
	// Check then never finds a term with no renewal time.
	e.setRenewed(sent)
	var renewer sync.WaitGroup
	renewer.Add(1)
	go func() {
		defer renewer.Done()
		e.renew(renewCtx, lease, sent, lost)
	}()
	defer func() {
		stopRenew()
		renewer.Wait()
	}()

	rev, err := e.waitToLead(ctx, key, lost)
	if err != nil {
		e.revoke(lease)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	e.leadTerm(ctx, &Leadership{cli: e.cli, key: key, token: token, identity: e.cfg.Identity}, lease, rev, lost)
	return nil
}

// renew keeps lease alive from last, the time the grant was sent, until ctx
// ends, and sends why on lost when it cannot.
func (e *Elector) renew(ctx context.Context, lease clientv3.LeaseID, last time.Time, lost chan<- error) {
	for {
		if !sleep(ctx, time.Until(last.Add(e.cfg.RetryPeriod))) {
			return
		}
		for {
			deadline := last.Add(e.cfg.RenewDeadline)
			if !time.Now().Before(deadline) {
				lost <- fmt.Errorf("election: lease %x not renewed for %v", int64(lease), e.cfg.RenewDeadline)
				return
			}
			sent := time.Now()
			rctx, cancel := context.WithDeadline(ctx, deadline)
			_, err := e.cli.KeepAliveOnce(rctx, lease)
			cancel()
			if err == nil {
				last = sent
				e.setRenewed(sent)
				break
			}
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				lost <- fmt.Errorf("election: lease %x expired", int64(lease))
				return
			}
			e.log.Debug("election: renewal failed", "lease", fmt.Sprintf("%x", int64(lease)), "err", err)
			if !sleep(ctx, min(e.cfg.RetryPeriod/4, time.Until(deadline))) {
				return
			}
		}
	}
}

// waitToLead returns when key is the first-created key of the election, with
// the revision it saw that at, or an error when the candidacy ends first
// (the renewer gave up, key was deleted, ctx ended). It reports every leader
// it sees to OnNewLeader.
func (e *Elector) waitToLead(ctx context.Context, key string, lost <-chan error) (int64, error) {
	for {
		// The first key and whether ours is still there, at one revision.
		rctx, cancel := context.WithTimeout(ctx, e.cfg.RenewDeadline)
		resp, err := e.cli.Txn(rctx).Then(
			clientv3.OpGet(e.keyPrefix, clientv3.WithFirstCreate()...),
			clientv3.OpGet(key, clientv3.WithCountOnly()),
		).Commit()
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			select {
			case why := <-lost:
				return 0, why
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(e.cfg.RetryPeriod / 4):
				continue
			}
		}
		first := resp.Responses[0].GetResponseRange().Kvs
		if resp.Responses[1].GetResponseRange().Count == 0 || len(first) == 0 {
			return 0, errKeyDeleted
		}
		e.observe(string(first[0].Value))
		if string(first[0].Key) == key {
			return resp.Header.Revision, nil
		}
		if err := e.waitChange(ctx, key, resp.Header.Revision+1, lost); err != nil {
			return 0, err
		}
	}
}

// waitChange watches the election from rev until anything changes, and
// returns an error if the change deletes key or the candidacy ends.
func (e *Elector) waitChange(ctx context.Context, key string, rev int64, lost <-chan error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := e.cli.Watch(wctx, e.keyPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	for {
		select {
		case why := <-lost:
			return why
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil || wr.Canceled {
				// Compacted, no leader, closed: read the election again,
				// after a pause so that a member without a leader is not
				// asked in a tight loop.
				sleep(ctx, e.cfg.RetryPeriod/4)
				return nil
			}
			if len(wr.Events) == 0 {
				continue // a progress notification
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE && string(ev.Kv.Key) == key {
					return errKeyDeleted
				}
			}
			return nil
		}
	}
}

// leadTerm runs one term of leadership from the revision rev at which this
// candidate was seen leading, until it is lost or ctx is cancelled.
func (e *Elector) leadTerm(ctx context.Context, l *Leadership, lease clientv3.LeaseID, rev int64, lost <-chan error) {
	leadCtx, cancelLead := context.WithCancel(ctx)
	defer cancelLead()
	done := make(chan struct{})
	e.mu.Lock()
	e.lead = l
	e.callbacks++
	e.lostAt, e.lostWhy = time.Time{}, nil
	e.mu.Unlock()
	e.isLeader.Set(1)
	e.log.Info("election: leading", "prefix", e.cfg.Prefix, "identity", e.cfg.Identity, "token", l.token)
	go func() {
		defer close(done)
		e.cfg.Callbacks.OnStartedLeading(leadCtx, l)
	}()

	// The key is watched on a goroutine of its own, so that a slow or
	// unreachable server never delays stepping down when the renewer
	// gives up.
	watchCtx, stopWatch := context.WithCancel(ctx)
	gone := make(chan error, 1)
	var watcher sync.WaitGroup
	watcher.Add(1)
	go func() {
		defer watcher.Done()
		gone <- e.watchTerm(watchCtx, l.key, rev)
	}()
	var why error
	select {
	case why = <-lost:
	case why = <-gone: // errKeyDeleted; nil only once ctx ended
	case <-ctx.Done():
	}
	stopWatch()
	watcher.Wait()
	cancelLead()
	if why != nil {
		e.stepDown(why)
		e.log.Warn("election: leadership lost", "prefix", e.cfg.Prefix, "identity", e.cfg.Identity, "token", l.token, "why", why)
		if f := e.cfg.Callbacks.OnStoppedLeading; f != nil {
			f()
		}
		// Revoking ends the term on the server too, if it has not ended
		// there yet: fenced writes of the callback fail from now on, and
		// the next candidate need not wait for the lease to run out.
		e.revoke(lease)
		<-done
		e.callbackReturned()
		return
	}

	// Cancelled: lead on until the callback returned, then release.
	select {
	case <-done:
	case why = <-lost:
		e.stepDown(why) // Check fails until the callback returns
		<-done
	}
	e.stepDown(nil)
	e.callbackReturned()
	if f := e.cfg.Callbacks.OnStoppedLeading; f != nil {
		f()
	}
	if e.cfg.ReleaseOnCancel || why != nil {
		e.revoke(lease)
	}
	e.log.Info("election: stopped leading", "prefix", e.cfg.Prefix, "identity", e.cfg.Identity, "token", l.token,
		"released", e.cfg.ReleaseOnCancel)
}

// watchTerm returns errKeyDeleted when key is deleted (or found missing), and
// nil when ctx ends.
func (e *Elector) watchTerm(ctx context.Context, key string, rev int64) error {
	for {
		if e.watchKey(ctx, key, rev) {
			return errKeyDeleted
		}
		if ctx.Err() != nil {
			return nil
		}
		// The watch broke (compaction, no leader, a closed stream): look
		// at the key again, then watch on from there.
		rctx, cancel := context.WithTimeout(ctx, e.cfg.RenewDeadline)
		resp, err := e.cli.Get(rctx, key)
		cancel()
		switch {
		case err != nil:
			if ctx.Err() == nil {
				e.log.Debug("election: read own key", "key", key, "err", err)
			}
		case len(resp.Kvs) == 0:
			return errKeyDeleted
		default:
			rev = resp.Header.Revision + 1
		}
	}
}

// watchKey watches key from rev and reports whether it was deleted; it
// returns false when ctx ends or the watch breaks.
func (e *Elector) watchKey(ctx context.Context, key string, rev int64) bool {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := e.cli.Watch(wctx, key, clientv3.WithRev(rev))
	for {
		select {
		case <-ctx.Done():
			return false
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil || wr.Canceled {
				sleep(ctx, e.cfg.RetryPeriod/4)
				return false
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					return true
				}
			}
		}
	}
}

func (e *Elector) observe(identity string) {
	e.mu.Lock()
	changed := identity != e.leader
	e.leader = identity
	e.mu.Unlock()
	if changed {
		e.log.Info("election: new leader", "prefix", e.cfg.Prefix, "leader", identity)
		if f := e.cfg.Callbacks.OnNewLeader; f != nil {
			f(identity)
		}
	}
}

func (e *Elector) setRenewed(t time.Time) {
	e.mu.Lock()
	e.renewed = t
	e.mu.Unlock()
}

// stepDown records that the current term ended (for why; nil when it was
// given up), while its callback may still run.
func (e *Elector) stepDown(why error) {
	e.mu.Lock()
	if e.lead != nil && why != nil {
		e.lostAt, e.lostWhy = time.Now(), why
	}
	e.lead = nil
	e.mu.Unlock()
	e.isLeader.Set(0)
}

func (e *Elector) callbackReturned() {
	e.mu.Lock()
	e.callbacks--
	e.lostAt, e.lostWhy = time.Time{}, nil
	e.mu.Unlock()
}

// revoke revokes lease, for at most RenewDeadline, whatever ctx the
// campaign had: a withdrawing candidate must not leave its key behind.
func (e *Elector) revoke(lease clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.RenewDeadline)
	defer cancel()
	if _, err := e.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		e.log.Debug("election: revoke lease", "lease", fmt.Sprintf("%x", int64(lease)), "err", err)
	}
}

// sleep waits for d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
