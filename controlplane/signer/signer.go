// Package signer is the only holder of the cluster CA's private key. It
// runs as its own process and answers one narrow request over a UNIX
// socket: "sign this approved certificate signing request". It trusts
// nothing the API process says: it re-checks the signer name, the subject
// and usages that signer allows, the approval, the request's own signature
// and the duration bounds before it signs.
package signer

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// ErrRejected is wrapped by the client's error when the signer refused the
// request on its merits (as opposed to being unreachable).
var ErrRejected = errors.New("signer rejected the request")

// Config configures a Server.
type Config struct {
	CACert *x509.Certificate
	CAKey  crypto.Signer
	// MaxDuration caps certificate lifetimes; 0 means one year.
	MaxDuration time.Duration
	// Backdate is how far before now certificates start, for clocks that
	// run a little behind; 0 means pki.Backdate (5 minutes, as
	// kube-controller-manager). Demos with lifetimes of seconds shorten it,
	// since renewal is planned from the start of the validity.
	Backdate time.Duration
	Clock    clock.Clock
	Logger   *slog.Logger
}

// Server signs approved requests.
type Server struct {
	cfg Config
}

// New returns a Server.
func New(cfg Config) *Server {
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.MaxDuration <= 0 {
		cfg.MaxDuration = csrpolicy.DefaultDuration
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Backdate <= 0 {
		cfg.Backdate = pki.Backdate
	}
	return &Server{cfg: cfg}
}

// Sign validates csr on its own and returns the signed certificate (PEM).
func (s *Server) Sign(csr *certv1.CertificateSigningRequest) ([]byte, error) {
	if csr == nil {
		return nil, fmt.Errorf("%w: no request", csrpolicy.ErrPolicy)
	}
	if csrpolicy.StateOf(csr.Status) != csrpolicy.Approved {
		return nil, fmt.Errorf("%w: request %q is not approved, or already denied, failed or issued", csrpolicy.ErrPolicy, csr.Name)
	}
	req, err := pki.ParseCSR(csr.Spec.Request)
	if err != nil {
		return nil, fmt.Errorf("%w: request %q: %v", csrpolicy.ErrPolicy, csr.Name, err)
	}
	if err := csrpolicy.Validate(csr.Spec.SignerName, req, csr.Spec.Usages); err != nil {
		return nil, fmt.Errorf("request %q: %w", csr.Name, err)
	}
	d, err := csrpolicy.Duration(csr.Spec.ExpirationSeconds, s.cfg.MaxDuration)
	if err != nil {
		return nil, fmt.Errorf("request %q: %w", csr.Name, err)
	}
	ku, eku, err := csrpolicy.KeyUsages(csr.Spec.Usages)
	if err != nil {
		return nil, fmt.Errorf("request %q: %w", csr.Name, err)
	}
	now := s.cfg.Clock.Now()
	cert, err := pki.Issue(pki.LeafSpec{
		CommonName:    req.Subject.CommonName,
		Organizations: req.Subject.Organization,
		DNSNames:      req.DNSNames,
		IPs:           req.IPAddresses,
		KeyUsage:      ku,
		ExtKeyUsage:   eku,
		NotBefore:     now.Add(-s.cfg.Backdate),
		NotAfter:      now.Add(d),
	}, req.PublicKey, s.cfg.CACert, s.cfg.CAKey)
	if err != nil {
		return nil, err
	}
	return pki.EncodeCert(cert), nil
}

// Listen creates the UNIX socket at path, mode 0600, replacing a stale
// socket left by an earlier run.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("signer socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("signer socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("signer socket %s: %w", path, err)
	}
	return ln, nil
}

// LoadCA reads the CA certificate and key for the signer, refusing a key
// file whose mode lets anyone but its owner read it.
func LoadCA(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	key, err := pki.ReadKeyFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	b, err := pki.ReadCertFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	certs, _ := pki.ParseCerts(b)
	return certs[0], key, nil
}
