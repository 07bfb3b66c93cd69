package connmux

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// servePort serves a gRPC health service and an HTTP handler on one port
// and returns its address; cleanup stops them.
func servePort(t *testing.T, sniff time.Duration) (addr string, m *Mux, wait func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m = New(l, sniff)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello "+r.URL.Path)
	})}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = gs.Serve(m.GRPC()) }()
	go func() { defer wg.Done(); _ = hs.Serve(m.HTTP()) }()
	go func() {
		defer wg.Done()
		if err := m.Serve(); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	stopped := false
	wait = func() {
		if stopped {
			return
		}
		stopped = true
		gs.Stop()
		_ = hs.Close()
		_ = m.Close()
		wg.Wait()
	}
	t.Cleanup(wait)
	return l.Addr().String(), m, wait
}

func checkGRPC(t *testing.T, addr string) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("grpc health check: %v", err)
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("grpc health: %v", resp.Status)
	}
}

func checkHTTP(t *testing.T, addr string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("http get: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "hello /metrics" {
		t.Fatalf("http body %q", body)
	}
}

func TestBothProtocolsOnOnePort(t *testing.T) {
	addr, _, _ := servePort(t, 0)
	for range 3 {
		checkGRPC(t, addr)
		checkHTTP(t, addr)
	}
}

func TestSilentClientBlocksNoOne(t *testing.T) {
	addr, _, _ := servePort(t, 500*time.Millisecond)
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// A client that sent one byte of the preface and stopped, too.
	partial, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	if _, err := partial.Write([]byte("PR")); err != nil {
		t.Fatal(err)
	}
	checkGRPC(t, addr)
	checkHTTP(t, addr)
	// Both are dropped once the sniff deadline passes.
	for _, c := range []net.Conn{silent, partial} {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("silent connection: read got %v, want EOF", err)
		}
	}
}

func TestCloseStopsEverything(t *testing.T) {
	addr, m, wait := servePort(t, 0)
	checkGRPC(t, addr)
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// Close only once the mux holds the connection: one still in the
	// listener's backlog is reset by the kernel when the listener closes,
	// which is not the Mux's doing.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		m.mu.Lock()
		held := len(m.sniffing)
		m.mu.Unlock()
		if held == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the mux never took the silent connection")
		}
	}
	done := make(chan struct{})
	go func() { wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("servers did not stop")
	}
	if _, err := m.GRPC().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after close: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("port still accepts after close")
	}
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("unsniffed connection after close: read got %v, want EOF", err)
	}
}

func TestClosingOneSideKeepsTheOther(t *testing.T) {
	addr, m, _ := servePort(t, 0)
	_ = m.GRPC().Close()
	checkHTTP(t, addr)
}

// benchmarkUnary measures gRPC unary calls from parallel clients over one
// connection, served straight from the listener or through a Mux.
func benchmarkUnary(b *testing.B, muxed bool) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	served := l
	var m *Mux
	if muxed {
		m = New(l, 0)
		served = m.GRPC()
		go func() { _ = m.Serve() }()
	}
	go func() { _ = gs.Serve(served) }()
	defer func() {
		gs.Stop()
		if m != nil {
			_ = m.Close()
		}
	}()
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)
	ctx := context.Background()
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkUnaryDirect(b *testing.B) { benchmarkUnary(b, false) }
func BenchmarkUnaryMuxed(b *testing.B)  { benchmarkUnary(b, true) }
