package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// healthStatus is etcd's /health answer, field for field: health is the
// string "true" or "false", reason says why it is false.
type healthStatus struct {
	Health string `json:"health"`
	Reason string `json:"reason"`
}

var healthy = healthStatus{Health: "true"}

// healthCheck is what one of the health endpoints checks, given the alarms
// to ignore and whether the caller asked for a serializable check.
type healthCheck func(ctx context.Context, excludedAlarms map[string]bool, serializable bool) healthStatus

// healthEndpoints registers etcd's three health endpoints. Each answers
// GET only, with etcd's JSON: 200 when healthy, 503 with the reason when
// not. ?exclude=NAME ignores an alarm; ?serializable=true checks this member
// alone, without a read index round (so without the leader).
//
//   - /health: no alarm, a known leader (unless serializable), and a read
//     that succeeds within the request timeout.
//   - /livez: the same without the leader, NOSPACE always ignored: the
//     process serves, whatever the cluster's state.
//   - /readyz: no alarm, and the read.
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
	mux.HandleFunc("/livez", s.serveHealth(func(ctx context.Context, excluded map[string]bool, serializable bool) healthStatus {
		excluded[pb.AlarmType_NOSPACE.String()] = true
		if h := s.checkAlarms(excluded); h != healthy {
			return h
		}
		return s.checkRead(ctx, serializable)
	}))
	mux.HandleFunc("/readyz", s.serveHealth(func(ctx context.Context, excluded map[string]bool, serializable bool) healthStatus {
		if h := s.checkAlarms(excluded); h != healthy {
			return h
		}
		return s.checkRead(ctx, serializable)
	}))
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

// checkRead reads one key, as etcd's check does: linearizably (after a read
// index round, which needs the leader and a quorum) unless serializable.
func (s *Server) checkRead(ctx context.Context, serializable bool) healthStatus {
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	if !serializable {
		if err := s.node.ReadIndex(ctx); err != nil {
			return healthStatus{Health: "false", Reason: fmt.Sprintf("RANGE ERROR:%s", err)}
		}
	}
	if _, err := s.kv.Range(&pb.RangeRequest{Key: []byte("health"), KeysOnly: true, Limit: 1}); err != nil {
		return healthStatus{Health: "false", Reason: fmt.Sprintf("RANGE ERROR:%s", err)}
	}
	return healthy
}
