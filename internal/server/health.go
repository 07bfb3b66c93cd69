package server

import (
	"context"
	"encoding/json"
	"fmt"
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

// serveHealth answers /health as etcd does: unhealthy (503) while an alarm
// is active (except those named in ?exclude=, as etcd's ?exclude=NOSPACE),
// while the member knows no leader, or when a linearizable read (serializable
// with ?serializable=true) fails within the request timeout.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	excluded := map[string]bool{}
	for _, a := range r.URL.Query()["exclude"] {
		excluded[strings.ToUpper(a)] = true
	}
	h := s.checkHealth(r.Context(), excluded, r.URL.Query().Get("serializable") == "true")
	s.metrics.recordHealth(h.Health == "true")
	w.Header().Set("Content-Type", "application/json")
	if h.Health != "true" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(h)
}

func (s *Server) checkHealth(ctx context.Context, excludedAlarms map[string]bool, serializable bool) healthStatus {
	for _, a := range s.applier.Alarms().List() {
		name := a.Alarm.String()
		if excludedAlarms[name] {
			continue
		}
		switch a.Alarm {
		case pb.AlarmType_NOSPACE, pb.AlarmType_CORRUPT:
			return healthStatus{Health: "false", Reason: "ALARM " + name}
		default:
			return healthStatus{Health: "false", Reason: "ALARM UNKNOWN"}
		}
	}
	if s.node.Leader() == 0 {
		return healthStatus{Health: "false", Reason: "RAFT NO LEADER"}
	}
	if !serializable {
		ctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
		defer cancel()
		if err := s.node.ReadIndex(ctx); err != nil {
			return healthStatus{Health: "false", Reason: fmt.Sprintf("RANGE ERROR:%s", err)}
		}
	}
	return healthStatus{Health: "true"}
}
