package compat

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// metricTypes scrapes addr's /metrics and returns each family's type, from
// the "# TYPE name type" lines of the text format.
func metricTypes(t *testing.T, addr string) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	types := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	return types
}

// TestMetricsMatchEtcd checks that every etcd_ and grpc_ metric plinth
// serves is one etcd serves, with the same type: plinth takes etcd's names
// only where the meaning is the same, so dashboards and alerts read them
// unchanged.
func TestMetricsMatchEtcd(t *testing.T) {
	p := startPair(t, oneMember)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range []*server{p.ref, p.tgt} {
		if _, err := s.kv.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); err != nil {
			t.Fatalf("%s: put: %v", s.name, err)
		}
	}
	ref, tgt := metricTypes(t, p.ref.addr), metricTypes(t, p.tgt.addr)
	// etcd serves the handling histogram only with --metrics=extensive;
	// plinth always does (etcd's etcdGRPCRequestsSlow alert reads it).
	ref["grpc_server_handling_seconds"] = "histogram"
	checked := 0
	for name, typ := range tgt {
		if !strings.HasPrefix(name, "etcd_") && !strings.HasPrefix(name, "grpc_") {
			continue
		}
		checked++
		switch refType, ok := ref[name]; {
		case !ok:
			t.Errorf("plinth serves %s, which etcd does not", name)
		case refType != typ:
			t.Errorf("%s is a %s in plinth, a %s in etcd", name, typ, refType)
		}
	}
	t.Logf("%d etcd_ and grpc_ metrics checked against etcd's", checked)
}
