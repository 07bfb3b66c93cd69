package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// grpcMetrics are the gRPC server metrics of go-grpc-prometheus, which etcd
// serves and its dashboards read: grpc_server_started_total,
// grpc_server_handled_total, grpc_server_msg_received_total,
// grpc_server_msg_sent_total and grpc_server_handling_seconds, labelled by
// grpc_type, grpc_service, grpc_method (and grpc_code).
//
// Every method's series are made once, when the services are registered, so
// that a request only adds to counters it finds in a map never written again:
// no label lookups, no locks.
type grpcMetrics struct {
	started  *prometheus.CounterVec
	handled  *prometheus.CounterVec
	received *prometheus.CounterVec
	sent     *prometheus.CounterVec
	handling *prometheus.HistogramVec
	methods  map[string]*methodMetrics // by full method name; read-only once serving
}

// methodMetrics are one method's series.
type methodMetrics struct {
	started, received, sent prometheus.Counter
	handling                prometheus.Observer
	handled                 [codes.Unauthenticated + 1]prometheus.Counter // by code
}

func newGRPCMetrics() *grpcMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	return &grpcMetrics{
		started:  counter("grpc_server_started_total", "Total number of RPCs started on the server.", labels),
		handled:  counter("grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.", append(labels[:3:3], "grpc_code")),
		received: counter("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", labels),
		sent:     counter("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", labels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: prometheus.DefBuckets,
		}, labels),
		methods: map[string]*methodMetrics{},
	}
}

func (g *grpcMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{g.started, g.handled, g.received, g.sent, g.handling}
}

// register makes the series of every method srv serves. Call it after the
// services are registered and before serving.
func (g *grpcMetrics) register(srv *grpc.Server) {
	for service, info := range srv.GetServiceInfo() {
		for _, method := range info.Methods {
			typ := "unary"
			switch {
			case method.IsClientStream && method.IsServerStream:
				typ = "bidi_stream"
			case method.IsClientStream:
				typ = "client_stream"
			case method.IsServerStream:
				typ = "server_stream"
			}
			m := &methodMetrics{
				started:  g.started.WithLabelValues(typ, service, method.Name),
				received: g.received.WithLabelValues(typ, service, method.Name),
				sent:     g.sent.WithLabelValues(typ, service, method.Name),
				handling: g.handling.WithLabelValues(typ, service, method.Name),
			}
			for c := range m.handled {
				m.handled[c] = g.handled.WithLabelValues(typ, service, method.Name, codes.Code(c).String())
			}
			g.methods["/"+service+"/"+method.Name] = m
		}
	}
}

func (m *methodMetrics) done(start time.Time, err error) {
	code := status.Code(err)
	if int(code) >= len(m.handled) {
		code = codes.Unknown
	}
	m.handled[code].Inc()
	m.handling.Observe(time.Since(start).Seconds())
}

func (g *grpcMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	m := g.methods[info.FullMethod]
	if m == nil {
		return handler(ctx, req)
	}
	start := time.Now()
	m.started.Inc()
	m.received.Inc()
	resp, err := handler(ctx, req)
	if err == nil {
		m.sent.Inc()
	}
	m.done(start, err)
	return resp, err
}

func (g *grpcMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	m := g.methods[info.FullMethod]
	if m == nil {
		return handler(srv, ss)
	}
	start := time.Now()
	m.started.Inc()
	err := handler(srv, &countedStream{ServerStream: ss, m: m})
	m.done(start, err)
	return err
}

// countedStream counts a stream's messages.
type countedStream struct {
	grpc.ServerStream
	m *methodMetrics
}

func (s *countedStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if err == nil {
		s.m.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(msg any) error {
	err := s.ServerStream.RecvMsg(msg)
	if err == nil {
		s.m.received.Inc()
	}
	return err
}
