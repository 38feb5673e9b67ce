// Package apiserver serves the Kubernetes API subset nodetrust's control
// plane offers: certificates.k8s.io/v1 CertificateSigningRequests with
// watch, approval and status, health and version endpoints, the discovery
// documents k8s.io/client-go needs, and nodetrust's admin endpoints for
// bootstrap tokens and instance registrations. It authenticates bootstrap
// tokens and client certificates of the cluster CA, and authorizes every
// call.
package apiserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/instances"
	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/controlplane/tokens"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// DefaultMaxBody is the largest request body accepted.
const DefaultMaxBody = 256 << 10

// Config configures a Server.
type Config struct {
	Store    *store.Store
	Tokens   *tokens.Manager
	Registry *instances.Registry
	Clock    clock.Clock
	Logger   *slog.Logger
	// MaxBody is the largest request body; 0 means DefaultMaxBody.
	MaxBody int64
	// Ready reports readiness for /readyz; nil means always ready.
	Ready func() error
	// Rotation serves the trust-bundle ConfigMap and the rotation admin
	// endpoints; nil answers 404 to both.
	Rotation Rotation
}

// Server is the API's HTTP handler.
type Server struct {
	cfg Config
	clk clock.Clock
	log *slog.Logger
	mux *http.ServeMux
}

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	s := &Server{cfg: cfg, clk: clock.Or(cfg.Clock), log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.routes()
	return s
}

// user is an authenticated caller.
type user struct {
	Name   string
	UID    string
	Groups []string
}

func (u *user) in(g string) bool { return slices.Contains(u.Groups, g) }

func (u *user) admin() bool { return u.in(csrpolicy.MastersGroup) }

type ctxKey struct{}

func userFrom(ctx context.Context) *user {
	u, _ := ctx.Value(ctxKey{}).(*user)
	return u
}

// ServeHTTP authenticates the caller and dispatches.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz", "/livez", "/readyz", "/version":
		s.mux.ServeHTTP(w, r) // public, as for system:public-info-viewer
		return
	}
	u, err := s.authenticate(r)
	if err != nil {
		s.log.Info("authentication failed", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
		writeStatus(w, unauthorized(err.Error()))
		return
	}
	if u == nil {
		writeStatus(w, unauthorized("authentication required: present a bootstrap token or a client certificate of the cluster CA"))
		return
	}
	s.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, u)))
}

// authenticate returns the caller, nil for an anonymous one, or an error
// for bad credentials. The error never holds the token secret.
func (s *Server) authenticate(r *http.Request) (*user, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		bearer, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return nil, errors.New("unsupported Authorization scheme; want Bearer")
		}
		name, groups, err := s.cfg.Tokens.Authenticate(strings.TrimSpace(bearer), s.clk.Now())
		if err != nil {
			return nil, redactToken(err)
		}
		return &user{Name: name, Groups: append(groups, csrpolicy.AuthenticatedGrp)}, nil
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		c := r.TLS.VerifiedChains[0][0]
		if c.Subject.CommonName == "" {
			return nil, errors.New("client certificate has an empty common name")
		}
		groups := append(slices.Clone(c.Subject.Organization), csrpolicy.AuthenticatedGrp)
		return &user{Name: c.Subject.CommonName, Groups: groups}, nil
	}
	return nil, nil
}

// redactToken keeps the kind of token failure and the token ID, never the
// secret (errors from tokens never hold it).
func redactToken(err error) error {
	switch {
	case errors.Is(err, tokens.ErrExpired), errors.Is(err, tokens.ErrUnknown), errors.Is(err, tokens.ErrMalformed):
		return fmt.Errorf("invalid bearer token: %w", err)
	}
	return errors.New("invalid bearer token")
}

// TLSConfig returns the API's TLS configuration: TLS 1.3 preferred, 1.2
// minimum, client certificates verified against clientCAs when offered.
func TLSConfig(cert tls.Certificate, clientCAs *x509.CertPool, clk clock.Clock) *tls.Config {
	clk = clock.Or(clk)
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCAs,
		NextProtos:   []string{"h2", "http/1.1"},
		Time:         clk.Now,
	}
}

// Serve serves the API over TLS on ln until ctx is done, and returns after
// every request has ended (watches are cut).
func (s *Server) Serve(ctx context.Context, ln net.Listener, tlsCfg *tls.Config) error {
	hs := &http.Server{
		Handler:           s,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.ServeTLS(ln, "", "") }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("serve API: %w", err)
	}
}
