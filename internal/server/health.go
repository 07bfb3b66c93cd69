package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// healthStatus is etcd's /health answer, field for field: health is the
// string "true" or "false", reason says why it is false.
type healthStatus struct {
	Health string `json:"health"`
	Reason string `json:"reason"`
}

var healthy = healthStatus{Health: "true"}

// healthCheck is what /health checks, given the alarms to ignore and
// whether the caller asked for a serializable check.
type healthCheck func(ctx context.Context, excludedAlarms map[string]bool, serializable bool) healthStatus

// healthEndpoints registers etcd's health endpoints: /health with its JSON
// answer, and /livez and /readyz with their checks (see probes).
//
// /health answers GET only: 200 with {"health":"true","reason":""}, or 503
// with the reason: an alarm is active (?exclude=NOSPACE ignores one), no
// leader is known, or a read fails within the request timeout. The read is
// linearizable (a read index round) unless ?serializable=true, which also
// skips the leader check: it checks this member alone.
func (s *Server) healthEndpoints(mux *http.ServeMux) {
	mux.HandleFunc("/health", s.serveHealth(func(ctx context.Context, excluded map[string]bool, serializable bool) healthStatus {
		if h := s.checkAlarms(excluded); h != healthy {
			return h
		}
		if !serializable && s.node.Leader() == 0 {
			return healthStatus{Health: "false", Reason: "RAFT NO LEADER"}
		}
		return s.checkRead(ctx, serializable)
	}))
	s.probes(mux, "livez", []probe{
		{"serializable_read", func(ctx context.Context) error { return s.read(ctx, true) }},
	})
	s.probes(mux, "readyz", []probe{
		{"non_learner", func(context.Context) error {
			if s.Status().IsLearner {
				return errors.New("member is a learner")
			}
			return nil
		}},
		{"data_corruption", func(context.Context) error {
			for _, a := range s.applier.Alarms().List() {
				if a.Alarm == pb.AlarmType_CORRUPT {
					return errors.New("alarm activated: CORRUPT")
				}
			}
			return nil
		}},
		{"serializable_read", func(ctx context.Context) error { return s.read(ctx, true) }},
		{"linearizable_read", func(ctx context.Context) error { return s.read(ctx, false) }},
	})
}

// probe is one named check of /livez or /readyz.
type probe struct {
	name  string
	check func(ctx context.Context) error
}

// probes serves etcd's /livez or /readyz (path), in the style of
// Kubernetes's: GET /path runs every check not named in ?exclude= and
// answers "ok" (200) when all pass; ?verbose lists each check as "[+]name
// ok"; when one fails every check is listed, the failed ones as
// "[-]name failed: reason", with 503. /path/NAME runs one check.
func (s *Server) probes(mux *http.ServeMux, path string, checks []probe) {
	run := func(w http.ResponseWriter, r *http.Request, checks []probe) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		q := r.URL.Query()
		excluded := map[string]bool{}
		for _, name := range q["exclude"] {
			excluded[name] = true
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.requestTimeout())
		defer cancel()
		var out strings.Builder
		failed := false
		for _, p := range checks {
			if excluded[p.name] {
				continue
			}
			if err := p.check(ctx); err != nil {
				failed = true
				fmt.Fprintf(&out, "[-]%s failed: %v\n", p.name, err)
				continue
			}
			fmt.Fprintf(&out, "[+]%s ok\n", p.name)
		}
		s.metrics.recordHealth(!failed)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if failed {
			http.Error(w, out.String(), http.StatusServiceUnavailable)
			return
		}
		if _, verbose := q["verbose"]; !verbose {
			out.Reset()
		}
		out.WriteString("ok\n")
		_, _ = io.WriteString(w, out.String())
	}
	mux.HandleFunc("/"+path, func(w http.ResponseWriter, r *http.Request) { run(w, r, checks) })
	for _, p := range checks {
		mux.HandleFunc("/"+path+"/"+p.name, func(w http.ResponseWriter, r *http.Request) { run(w, r, []probe{p}) })
	}
}

func (s *Server) serveHealth(check healthCheck) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		excluded := map[string]bool{}
		for _, a := range r.URL.Query()["exclude"] {
			excluded[a] = true // case matters, as in etcd: NOSPACE, CORRUPT
		}
		h := check(r.Context(), excluded, r.URL.Query().Get("serializable") == "true")
		s.metrics.recordHealth(h == healthy)
		body, _ := json.Marshal(h)
		if h != healthy {
			http.Error(w, string(body), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(body)
	}
}

func (s *Server) checkAlarms(excluded map[string]bool) healthStatus {
	for _, a := range s.applier.Alarms().List() {
		name := a.Alarm.String()
		if excluded[name] {
			continue
		}
		switch a.Alarm {
		case pb.AlarmType_NOSPACE, pb.AlarmType_CORRUPT:
			return healthStatus{Health: "false", Reason: "ALARM " + name}
		default:
			return healthStatus{Health: "false", Reason: "ALARM UNKNOWN"}
		}
	}
	return healthy
}

// checkRead is /health's read, within the request timeout.
func (s *Server) checkRead(ctx context.Context, serializable bool) healthStatus {
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	if err := s.read(ctx, serializable); err != nil {
		return healthStatus{Health: "false", Reason: fmt.Sprintf("RANGE ERROR:%s", err)}
	}
	return healthy
}

// read reads one key, as etcd's checks do: linearizably (after a read index
// round, which needs the leader and a quorum) unless serializable.
func (s *Server) read(ctx context.Context, serializable bool) error {
	if !serializable {
		if err := s.node.ReadIndex(ctx); err != nil {
			return err
		}
	}
	_, err := s.kv.Range(&pb.RangeRequest{Key: []byte("health"), KeysOnly: true, Limit: 1})
	return err
}
