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
	"sync"
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
	// CACert and CAKey are the CA made by init (ID 0); nil when its key
	// was dropped by a finished rotation.
	CACert *x509.Certificate
	CAKey  crypto.Signer
	// CAs are further CAs held, made by rotations (see LoadDir).
	CAs []HeldCA
	// Dir is the signer's own folder, where CAs made by CreateCA are
	// written (key 0600); "" refuses CreateCA.
	Dir string
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

// HeldCA is a CA whose key the signer holds.
type HeldCA struct {
	ID   int
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Server signs approved requests.
type Server struct {
	cfg Config

	createMu sync.Mutex // serializes CreateCA and DropCA

	mu  sync.RWMutex
	cas map[string]*HeldCA // by pin; guarded by mu
	def *HeldCA            // used when a request names no CA: the newest; guarded by mu
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
	s := &Server{cfg: cfg, cas: map[string]*HeldCA{}}
	if cfg.CACert != nil && cfg.CAKey != nil {
		s.add(&HeldCA{ID: 0, Cert: cfg.CACert, Key: cfg.CAKey})
	}
	for i := range cfg.CAs {
		s.add(&cfg.CAs[i])
	}
	return s
}

// add holds ca; the newest CA is the default.
func (s *Server) add(ca *HeldCA) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cas[Pin(ca.Cert)] = ca
	if s.def == nil || ca.ID > s.def.ID {
		s.def = ca
	}
}

// ca returns the CA with pin, or the default one for "".
func (s *Server) ca(pin string) (*HeldCA, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if pin == "" {
		if s.def == nil {
			return nil, errors.New("the signer holds no CA key")
		}
		return s.def, nil
	}
	ca, ok := s.cas[pin]
	if !ok {
		return nil, fmt.Errorf("the signer holds no key for CA %s", pin)
	}
	return ca, nil
}

// Sign validates csr on its own and returns the certificate (PEM) signed
// by the newest CA the signer holds.
func (s *Server) Sign(csr *certv1.CertificateSigningRequest) ([]byte, error) {
	return s.SignWith("", csr)
}

// SignWith is Sign with the CA whose pin is caPin ("" for the newest).
func (s *Server) SignWith(caPin string, csr *certv1.CertificateSigningRequest) ([]byte, error) {
	ca, err := s.ca(caPin)
	if err != nil {
		return nil, err
	}
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
	}, req.PublicKey, ca.Cert, ca.Key)
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

// LoadCA reads the CA key and, from the certificate file (one CA or a
// trust bundle), the certificate of that key, refusing a key file whose
// mode lets anyone but its owner read it.
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
	for _, c := range certs {
		if samePublicKey(c.PublicKey, key.Public()) {
			return c, key, nil
		}
	}
	return nil, nil, fmt.Errorf("no certificate in %s matches the CA key %s", certPath, keyPath)
}

func samePublicKey(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
