// Command controller is an example of the election library: a controller
// run as several replicas, of which one leads and does the work, the others
// wait to take over. The leader reconciles once a second: it reads
// example/desired and writes example/status with a fenced put, so that a
// deposed leader's late write is refused. Each replica serves /healthz (the
// elector's Check, for a readiness or liveness probe) and /metrics
// (plinth_election_is_leader and a count of reconciles). See README.md.
//
//	go run ./examples/controller --identity a --listen 127.0.0.1:8081
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/plinthdb/plinth/election"
)

func main() {
	host, _ := os.Hostname()
	var (
		endpoints = flag.String("endpoints", "127.0.0.1:2379", "comma-separated plinth (or etcd) client endpoints")
		identity  = flag.String("identity", fmt.Sprintf("%s-%d", host, os.Getpid()), "this replica's name")
		listen    = flag.String("listen", "127.0.0.1:8081", "address of /healthz and /metrics")
		prefix    = flag.String("prefix", "/controllers/example", "election key prefix")
		lease     = flag.Duration("lease-duration", 15*time.Second, "election lease duration")
		renew     = flag.Duration("renew-deadline", 10*time.Second, "renew deadline")
		retry     = flag.Duration("retry-period", 2*time.Second, "retry period")
		stopDelay = flag.Duration("stop-delay", 0, "how long the leader's work takes to stop once its term ends (shows /healthz failing meanwhile)")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)) // the elector's lines name the identity
	if err := run(log, strings.Split(*endpoints, ","), *identity, *listen, *prefix, *lease, *renew, *retry, *stopDelay); err != nil {
		log.Error("controller failed", "identity", *identity, "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, endpoints []string, identity, listen, prefix string, lease, renew, retry, stopDelay time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	defer cli.Close()

	reg := prometheus.NewRegistry()
	reconciles := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "example_controller_reconciles_total",
		Help: "Reconciles this replica tried while leading, by result: ok, fenced (refused: the term was over), error.",
	}, []string{"result"})
	reg.MustRegister(reconciles)

	e, err := election.New(cli, election.Config{
		Prefix: prefix, Identity: identity, Name: "example-controller",
		LeaseDuration: lease, RenewDeadline: renew, RetryPeriod: retry,
		ReleaseOnCancel: true,
		Registerer:      reg,
		Logger:          log,
		Callbacks: election.Callbacks{
			OnStartedLeading: func(ctx context.Context, lead *election.Leadership) {
				log.Info("started leading", "token", lead.Token())
				reconcileLoop(ctx, log, cli, lead, reconciles)
				if stopDelay > 0 {
					log.Info("winding down", "for", stopDelay)
					time.Sleep(stopDelay)
				}
			},
			OnStoppedLeading: func() { log.Info("stopped leading") },
			OnNewLeader:      func(leader string) { log.Info("leader", "leader", leader) },
		},
	})
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := e.Check(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok (leading: %v, leader: %q)\n", e.IsLeader(), e.Leader())
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	log.Info("serving /healthz and /metrics", "addr", listen)

	runErr := e.Run(ctx) // returns once ctx is cancelled and the work has stopped
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http: %w", err)
	}
	return runErr
}

// reconcileLoop is the leader's work: once a second, copy the desired state to
// the status, with a fenced put. It stops when the term ends.
func reconcileLoop(ctx context.Context, log *slog.Logger, cli *clientv3.Client, lead *election.Leadership, reconciles *prometheus.CounterVec) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := reconcile(rctx, cli, lead)
		cancel()
		switch {
		case err == nil:
			reconciles.WithLabelValues("ok").Inc()
		case errors.Is(err, election.ErrFenced):
			reconciles.WithLabelValues("fenced").Inc()
			log.Warn("reconcile refused: this term is over", "token", lead.Token())
			return
		case ctx.Err() == nil:
			reconciles.WithLabelValues("error").Inc()
			log.Warn("reconcile failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func reconcile(ctx context.Context, cli *clientv3.Client, lead *election.Leadership) error {
	desired, err := cli.Get(ctx, "example/desired")
	if err != nil {
		return fmt.Errorf("read desired state: %w", err)
	}
	want := "(nothing desired)"
	if len(desired.Kvs) > 0 {
		want = string(desired.Kvs[0].Value)
	}
	status := fmt.Sprintf("%s; reconciled by %s in term %d at %s", want, lead.Identity(), lead.Token(), time.Now().Format(time.RFC3339))
	if _, err := lead.Put(ctx, "example/status", status); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	return nil
}
