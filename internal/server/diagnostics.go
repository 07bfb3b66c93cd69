package server

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"

	"google.golang.org/grpc"

	"github.com/plinthdb/plinth/internal/connmux"
)

// httpHandler serves what etcd serves over HTTP beside its gRPC API:
// /metrics, /health, /livez, /readyz, and runtime profiles when enabled.
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.metrics.handler())
	s.healthEndpoints(mux)
	if s.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// serveClients serves the client listeners: each is split between gRPC and
// HTTP by connmux, so /metrics and /health answer on the client port, as
// etcd's do.
func (s *Server) serveClients() {
	s.metrics.grpc.register(s.grpc) // every service is registered by now
	s.clientHTTP = &http.Server{Handler: s.httpHandler()}
	for _, l := range s.listeners {
		m := connmux.New(l, 0)
		s.clientMux = append(s.clientMux, m)
		s.serveWG.Add(3)
		go func() {
			defer s.serveWG.Done()
			counted := countedListener{Listener: m.GRPC(), in: &s.metrics.clientBytesIn, out: &s.metrics.clientBytesOut}
			if err := s.grpc.Serve(counted); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				s.logger.Error("client listener failed", "addr", l.Addr().String(), "err", err)
			}
		}()
		go func() {
			defer s.serveWG.Done()
			if err := s.clientHTTP.Serve(m.HTTP()); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				s.logger.Error("client HTTP listener failed", "addr", l.Addr().String(), "err", err)
			}
		}()
		go func() {
			defer s.serveWG.Done()
			if err := m.Serve(); err != nil {
				s.logger.Error("client listener failed", "addr", l.Addr().String(), "err", err)
			}
		}()
		s.logger.Info("serving client requests", "addr", l.Addr().String())
	}
}

// startDiagnostics serves the HTTP diagnostics on the metrics URLs too.
// Client traffic never goes through it.
func (s *Server) startDiagnostics() error {
	if len(s.cfg.ListenMetricsURLs) == 0 {
		return nil
	}
	s.httpServer = &http.Server{Handler: s.httpHandler()}
	for _, u := range s.cfg.ListenMetricsURLs {
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", u.String(), err)
		}
		s.serveWG.Add(1)
		go func() {
			defer s.serveWG.Done()
			if err := s.httpServer.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.logger.Error("diagnostics listener failed", "addr", l.Addr().String(), "err", err)
			}
		}()
		s.logger.Info("serving diagnostics", "addr", l.Addr().String())
	}
	return nil
}
