package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/plinthdb/plinth/internal/testmember"
)

// getHTTP fetches path from the member's client port, where HTTP shares the
// port with gRPC.
func getHTTP(t *testing.T, srv *Server, method, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+srv.ClientAddrs()[0]+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// TestHealth checks etcd's /health, /livez and /readyz on the client port:
// healthy with a leader and no alarm; /health 503 with the alarm as reason
// while one is active, unless excluded; /readyz fails on CORRUPT only.
func TestHealth(t *testing.T) {
	srv, cli := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	check := func(path string, wantCode int, want healthStatus) {
		t.Helper()
		code, body := getHTTP(t, srv, http.MethodGet, path)
		var got healthStatus
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("%s: %q is not JSON: %v", path, body, err)
		}
		if code != wantCode || got != want {
			t.Fatalf("%s: %d %+v, want %d %+v", path, code, got, wantCode, want)
		}
	}
	for _, path := range []string{"/health", "/health?serializable=true"} {
		check(path, http.StatusOK, healthStatus{Health: "true"})
	}
	probe := func(path string, wantCode int, want string) {
		t.Helper()
		if code, body := getHTTP(t, srv, http.MethodGet, path); code != wantCode || string(body) != want {
			t.Fatalf("%s: %d %q, want %d %q", path, code, body, wantCode, want)
		}
	}
	probe("/livez", http.StatusOK, "ok\n")
	probe("/readyz?verbose", http.StatusOK, "[+]non_learner ok\n[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n")
	probe("/readyz/linearizable_read?verbose", http.StatusOK, "[+]linearizable_read ok\nok\n")

	req := &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: srv.memberID, Alarm: pb.AlarmType_NOSPACE}
	if _, err := srv.Propose(ctx, &pb.InternalRaftRequest{Alarm: req}); err != nil {
		t.Fatal(err)
	}
	check("/health", http.StatusServiceUnavailable, healthStatus{Health: "false", Reason: "ALARM NOSPACE"})
	check("/health?exclude=NOSPACE", http.StatusOK, healthStatus{Health: "true"})
	probe("/readyz", http.StatusOK, "ok\n") // NOSPACE fails no probe

	req = &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: srv.memberID, Alarm: pb.AlarmType_CORRUPT}
	if _, err := srv.Propose(ctx, &pb.InternalRaftRequest{Alarm: req}); err != nil {
		t.Fatal(err)
	}
	probe("/readyz", http.StatusServiceUnavailable, "[+]non_learner ok\n[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n[+]linearizable_read ok\n\n")
	probe("/readyz?exclude=data_corruption", http.StatusOK, "ok\n")
	probe("/livez", http.StatusOK, "ok\n")

	if code, _ := getHTTP(t, srv, http.MethodPost, "/health"); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST /health: %d, want 405", code)
	}
	if code, _ := getHTTP(t, srv, http.MethodGet, "/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("pprof without --enable-pprof: %d, want 404", code)
	}
}

// TestHealthWithoutLeader checks the answer of a member left alone by its
// peers: no leader, so unhealthy, as etcd's.
func TestHealthWithoutLeader(t *testing.T) {
	c := startTestCluster(t, 3, "health")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lead := c.leader(ctx)
	alone := (lead + 1) % 3
	for i := range 3 {
		if i != alone {
			c.stop(i)
		}
	}
	srv := c.servers[alone]
	var code int
	var got healthStatus
	waitFor(ctx, t, func() bool {
		var body []byte
		code, body = getHTTP(t, srv, http.MethodGet, "/health")
		got = healthStatus{}
		_ = json.Unmarshal(body, &got)
		return got.Reason == "RAFT NO LEADER"
	})
	if code != http.StatusServiceUnavailable || got.Health != "false" {
		t.Fatalf("health of a member alone: %d %+v, want 503 RAFT NO LEADER", code, got)
	}
	// Alone, it is still alive: a serializable check reads its own store.
	for _, path := range []string{"/health?serializable=true", "/livez", "/readyz/serializable_read"} {
		if code, body := getHTTP(t, srv, http.MethodGet, path); code != http.StatusOK {
			t.Fatalf("%s of a member alone: %d %s, want 200", path, code, body)
		}
	}
}

// TestDiagnosticsOnMetricsURLs checks that --listen-metrics-urls serves what
// the client port serves over HTTP, and that --enable-pprof adds the
// profiles to both.
func TestDiagnosticsOnMetricsURLs(t *testing.T) {
	metricsAddr := testmember.FreeAddr(t)
	srv, cli := startServerWith(t, t.TempDir(), func(c *Config) {
		c.ListenMetricsURLs = []url.URL{{Scheme: "http", Host: metricsAddr}}
		c.EnablePprof = true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil { // a leader is known from here on
		t.Fatal(err)
	}
	for _, addr := range []string{metricsAddr, srv.ClientAddrs()[0]} {
		for _, path := range []string{"/metrics", "/health", "/debug/pprof/"} {
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + path)
			if err != nil {
				t.Fatalf("%s%s: %v", addr, path, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s%s: %s", addr, path, resp.Status)
			}
			if path == "/metrics" && !strings.Contains(string(body), "etcd_server_has_leader 1") {
				t.Fatalf("%s/metrics lacks etcd_server_has_leader 1", addr)
			}
		}
	}
}
