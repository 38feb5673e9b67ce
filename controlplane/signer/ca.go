package signer

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

// Pin names a CA: "sha256:<hex of its SubjectPublicKeyInfo>".
func Pin(cert *x509.Certificate) string { return pki.Pin(cert) }

// Names of the certificates CreateCA issues besides the CA.
const (
	AdminCommonName   = "nodetrust-admin"
	ServingCommonName = "kube-apiserver"
)

// CAValidity is the lifetime of a CA made by CreateCA.
const CAValidity = 10 * 365 * 24 * time.Hour

// ControlPlaneCertValidity is the lifetime of the API serving and admin
// certificates CreateCA issues: init's default, whatever the signer's
// MaxDuration for node certificates.
const ControlPlaneCertValidity = csrpolicy.DefaultDuration

// CreateRequest asks the signer for a new root CA. It is idempotent per
// ID: asked again for an ID it already made, the signer answers with what
// it made then, whatever the requests say.
type CreateRequest struct {
	ID int `json:"id"`
	// AdminCSR (CN=nodetrust-admin, O=system:masters) and ServingCSR
	// (CN=kube-apiserver, serving names) are issued under the new CA in
	// the same step, and only then: the admin must still reach the API
	// after the old CA is dropped, and the signer issues system:masters
	// certificates on no other path.
	AdminCSR   []byte `json:"adminCSR"`
	ServingCSR []byte `json:"servingCSR"`
}

// CreateAnswer is the new CA and the certificates issued under it (PEM).
type CreateAnswer struct {
	CA      []byte `json:"ca"`
	Admin   []byte `json:"admin"`
	Serving []byte `json:"serving"`
}

// CAInfo describes a CA the signer holds.
type CAInfo struct {
	ID  int    `json:"id"`
	Pin string `json:"pin"`
}

var caFile = regexp.MustCompile(`^ca-([1-9][0-9]{0,8})\.key$`)

func (s *Server) caPath(id int, suffix string) string {
	return filepath.Join(s.cfg.Dir, "ca-"+strconv.Itoa(id)+suffix)
}

// CreateCA makes a new ECDSA P-256 root CA in the signer's folder (key
// 0600, never sent anywhere) and issues the admin and API serving
// certificates of req under it.
func (s *Server) CreateCA(req CreateRequest) (CreateAnswer, error) {
	if s.cfg.Dir == "" {
		return CreateAnswer{}, errors.New("create CA: the signer has no folder to keep a new key in")
	}
	if req.ID < 1 || req.ID > 999999999 {
		return CreateAnswer{}, fmt.Errorf("%w: create CA: id %d out of range", csrpolicy.ErrPolicy, req.ID)
	}
	s.createMu.Lock()
	defer s.createMu.Unlock()
	if a, err := s.readCreated(req.ID); err == nil {
		return a, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return CreateAnswer{}, err
	}
	admin, err := pki.ParseCSR(req.AdminCSR)
	if err != nil {
		return CreateAnswer{}, fmt.Errorf("%w: admin request: %v", csrpolicy.ErrPolicy, err)
	}
	if admin.Subject.CommonName != AdminCommonName || !slices.Equal(admin.Subject.Organization, []string{csrpolicy.MastersGroup}) ||
		len(admin.DNSNames)+len(admin.IPAddresses)+len(admin.EmailAddresses)+len(admin.URIs) > 0 {
		return CreateAnswer{}, fmt.Errorf("%w: admin request must be CN=%s, O=%s and nothing else", csrpolicy.ErrPolicy, AdminCommonName, csrpolicy.MastersGroup)
	}
	serving, err := pki.ParseCSR(req.ServingCSR)
	if err != nil {
		return CreateAnswer{}, fmt.Errorf("%w: serving request: %v", csrpolicy.ErrPolicy, err)
	}
	if serving.Subject.CommonName != ServingCommonName || len(serving.Subject.Organization) > 0 || len(serving.EmailAddresses)+len(serving.URIs) > 0 {
		return CreateAnswer{}, fmt.Errorf("%w: serving request must be CN=%s with DNS and IP names only", csrpolicy.ErrPolicy, ServingCommonName)
	}
	now := s.cfg.Clock.Now()
	key, err := pki.GenerateKey()
	if err != nil {
		return CreateAnswer{}, err
	}
	ca, err := pki.NewCA(fmt.Sprintf("nodetrust-cluster-ca-%d", req.ID), key, now, CAValidity)
	if err != nil {
		return CreateAnswer{}, err
	}
	// The control plane's own certificates live as long as init's, not as
	// long as the (possibly seconds-short) node certificates: nothing
	// renews them outside a rotation.
	leaf := func(r *x509.CertificateRequest, eku x509.ExtKeyUsage) ([]byte, error) {
		c, err := pki.Issue(pki.LeafSpec{CommonName: r.Subject.CommonName, Organizations: r.Subject.Organization,
			DNSNames: r.DNSNames, IPs: r.IPAddresses, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{eku}, NotBefore: now.Add(-pki.Backdate), NotAfter: now.Add(ControlPlaneCertValidity)},
			r.PublicKey, ca, key)
		if err != nil {
			return nil, err
		}
		return pki.EncodeCert(c), nil
	}
	a := CreateAnswer{CA: pki.EncodeCert(ca)}
	if a.Admin, err = leaf(admin, x509.ExtKeyUsageClientAuth); err != nil {
		return CreateAnswer{}, err
	}
	if a.Serving, err = leaf(serving, x509.ExtKeyUsageServerAuth); err != nil {
		return CreateAnswer{}, err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return CreateAnswer{}, err
	}
	// The key is written last: its presence marks a finished CA.
	for _, f := range []struct {
		suffix string
		b      []byte
		mode   os.FileMode
	}{{".crt", a.CA, 0o644}, {".admin.crt", a.Admin, 0o644}, {".apiserver.crt", a.Serving, 0o644}, {".key", keyPEM, 0o600}} {
		if err := pki.WriteFile(s.caPath(req.ID, f.suffix), f.b, f.mode); err != nil {
			return CreateAnswer{}, err
		}
	}
	s.add(&HeldCA{ID: req.ID, Cert: ca, Key: key})
	s.cfg.Logger.Info("created CA", "ca_id", req.ID, "ca_pin", Pin(ca))
	return a, nil
}

// readCreated returns what CreateCA made for id, fs.ErrNotExist if
// nothing.
func (s *Server) readCreated(id int) (CreateAnswer, error) {
	if _, err := os.Stat(s.caPath(id, ".key")); err != nil {
		return CreateAnswer{}, err
	}
	var a CreateAnswer
	for _, f := range []struct {
		suffix string
		b      *[]byte
	}{{".crt", &a.CA}, {".admin.crt", &a.Admin}, {".apiserver.crt", &a.Serving}} {
		b, err := os.ReadFile(s.caPath(id, f.suffix))
		if err != nil {
			return CreateAnswer{}, fmt.Errorf("CA %d: %w", id, err)
		}
		*f.b = b
	}
	return a, nil
}

// DropCA deletes the key of the CA with pin; the signer signs with it no
// more. Dropping a CA not held is no error.
func (s *Server) DropCA(pin string) error {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	s.mu.Lock()
	ca, ok := s.cas[pin]
	if !ok {
		s.mu.Unlock()
		return nil
	}
	if len(s.cas) == 1 {
		s.mu.Unlock()
		return fmt.Errorf("%w: CA %s is the only one the signer holds", csrpolicy.ErrPolicy, pin)
	}
	delete(s.cas, pin)
	if s.def == ca {
		s.def = nil
		for _, c := range s.cas {
			if s.def == nil || c.ID > s.def.ID {
				s.def = c
			}
		}
	}
	s.mu.Unlock()
	path := s.caPath(ca.ID, ".key")
	if ca.ID == 0 {
		path = filepath.Join(s.cfg.Dir, "ca.key")
	}
	if s.cfg.Dir != "" {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("drop CA %s: %w", pin, err)
		}
		if err := pki.SyncDir(s.cfg.Dir); err != nil {
			return err
		}
	}
	s.cfg.Logger.Info("dropped CA", "ca_id", ca.ID, "ca_pin", pin)
	return nil
}

// CAs lists the CAs the signer holds, oldest first.
func (s *Server) CAs() []CAInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]CAInfo, 0, len(s.cas))
	for pin, c := range s.cas {
		out = append(out, CAInfo{ID: c.ID, Pin: pin})
	}
	slices.SortFunc(out, func(a, b CAInfo) int { return a.ID - b.ID })
	return out
}

// LoadDir reads the CAs made by rotations from the signer's folder dir,
// refusing key files others can read.
func LoadDir(dir string) ([]HeldCA, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("signer folder: %w", err)
	}
	var out []HeldCA
	for _, e := range ents {
		m := caFile.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		id, _ := strconv.Atoi(m[1])
		cert, key, err := LoadCA(filepath.Join(dir, "ca-"+m[1]+".crt"), filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, HeldCA{ID: id, Cert: cert, Key: key})
	}
	return out, nil
}
