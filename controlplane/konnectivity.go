package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/nodetrust/nodetrust/controlplane/tunnel"
)

// runKonnectivity serves Konnectivity's gRPC frontend on the configured
// UNIX socket and TCP address until ctx is done.
func (s *Server) runKonnectivity(ctx context.Context) error {
	type frontend struct {
		ln     net.Listener
		useTLS bool
	}
	var fronts []frontend
	closeAll := func() {
		for _, f := range fronts {
			f.ln.Close()
		}
	}
	if s.cfg.KonnectivitySocket != "" {
		ln, err := tunnel.ListenSocket(s.cfg.KonnectivitySocket)
		if err != nil {
			return fmt.Errorf("konnectivity socket: %w", err)
		}
		defer os.Remove(s.cfg.KonnectivitySocket)
		fronts = append(fronts, frontend{ln, false})
	}
	if s.cfg.KonnectivityListen != "" {
		ln, err := net.Listen("tcp", s.cfg.KonnectivityListen)
		if err != nil {
			closeAll()
			return fmt.Errorf("konnectivity listen %s: %w", s.cfg.KonnectivityListen, err)
		}
		fronts = append(fronts, frontend{ln, true})
	}
	s.cfg.Logger.Info("konnectivity frontend listening", "socket", s.cfg.KonnectivitySocket, "addr", s.cfg.KonnectivityListen)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(fronts))
	for i, f := range fronts {
		wg.Go(func() {
			errs[i] = s.Tunnel.ServeKonnectivity(ctx, f.ln, f.useTLS)
			cancel()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
