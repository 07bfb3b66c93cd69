package compat

import (
	"context"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestHealthEndpointsMatch compares etcd's HTTP health endpoints, served on
// the client port beside gRPC, with plinth's: status, content type and body
// (its lines in any order), on a healthy single member.
func TestHealthEndpointsMatch(t *testing.T) {
	p := startPair(t, oneMember)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range []*server{p.ref, p.tgt} {
		// A write makes sure each has elected itself and applied it.
		if _, err := s.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); err != nil {
			t.Fatalf("%s: put: %v", s.name, err)
		}
	}
	type answer struct {
		code        int
		contentType string
		body        string
	}
	get := func(s *server, method, path string) answer {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, "http://"+s.addr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %s %s: %v", s.name, method, path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		// etcd lists /readyz's checks in an order that varies.
		lines := strings.SplitAfter(string(body), "\n")
		sort.Strings(lines)
		return answer{resp.StatusCode, resp.Header.Get("Content-Type"), strings.Join(lines, "")}
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/health"},
		{http.MethodGet, "/health?serializable=true"},
		{http.MethodGet, "/health?exclude=NOSPACE"},
		{http.MethodGet, "/livez"},
		{http.MethodGet, "/livez?verbose"},
		{http.MethodGet, "/livez/serializable_read"},
		{http.MethodGet, "/readyz"},
		{http.MethodGet, "/readyz?verbose"},
		{http.MethodGet, "/readyz?verbose&exclude=linearizable_read"},
		{http.MethodGet, "/readyz/linearizable_read?verbose"},
		{http.MethodPost, "/health"},
	} {
		ref, tgt := get(p.ref, c.method, c.path), get(p.tgt, c.method, c.path)
		if ref != tgt {
			t.Errorf("%s %s: etcd answers %+v, plinth %+v", c.method, c.path, ref, tgt)
		}
	}
}
