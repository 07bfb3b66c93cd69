package server

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
)

// startDiagnostics serves HTTP diagnostics on the metrics URLs: runtime
// profiles when enabled. Client traffic never goes through it.
func (s *Server) startDiagnostics() error {
	if len(s.cfg.ListenMetricsURLs) == 0 {
		return nil
	}
	mux := http.NewServeMux()
	if s.cfg.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	s.httpServer = &http.Server{Handler: mux}
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
