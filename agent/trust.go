package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nodetrust/nodetrust/bootstrap"
)

// Bundle is the cluster's trust bundle as the control plane publishes it
// in ConfigMap kube-public/nodetrust-trust-bundle (docs/rotation.md).
type Bundle struct {
	// PEM is every trusted cluster root, the active one first.
	PEM []byte
	// Roots are the parsed certificates of PEM.
	Roots []*x509.Certificate
	// Active is the root that signs now; ActivePin its SPKI pin.
	Active    *x509.Certificate
	ActivePin string
	// Phase is the rotation phase (idle, update-clients, ...).
	Phase string
	// Generation counts changes; a higher one replaces a lower one.
	Generation uint64
}

// ErrBundle is wrapped by ParseBundle and AcceptBundle errors: the
// published bundle is not one the agent may switch to.
var ErrBundle = errors.New("trust bundle not acceptable")

// ParseBundle parses the data of the trust-bundle ConfigMap: ca.crt (PEM
// of CA certificates), active (sha256:<hex> of one of them), phase and
// generation (decimal).
func ParseBundle(data map[string]string) (*Bundle, error) {
	pemB, err := bootstrap.ParseCABundle([]byte(data["ca.crt"]))
	if err != nil {
		return nil, fmt.Errorf("%w: ca.crt: %w", ErrBundle, err)
	}
	b := &Bundle{PEM: pemB, ActivePin: data["active"], Phase: data["phase"]}
	if b.Generation, err = strconv.ParseUint(data["generation"], 10, 64); err != nil {
		return nil, fmt.Errorf("%w: generation %q is not a number", ErrBundle, data["generation"])
	}
	roots, err := bootstrap.ParseCerts(pemB)
	if err != nil {
		return nil, fmt.Errorf("%w: ca.crt: %w", ErrBundle, err)
	}
	for _, c := range roots {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("%w: ca.crt: %s is not a CA certificate", ErrBundle, c.Subject)
		}
		b.Roots = append(b.Roots, c)
		if bootstrap.SPKIPin(c) == b.ActivePin {
			b.Active = c
		}
	}
	if b.Active == nil {
		return nil, fmt.Errorf("%w: the active CA %q is not in ca.crt (%d roots)", ErrBundle, b.ActivePin, len(b.Roots))
	}
	return b, nil
}

// Pool returns the bundle's roots as a pool.
func (b *Bundle) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range b.Roots {
		p.AddCert(c)
	}
	return p
}

// AcceptBundle says whether the agent may switch to bundle b, fetched at
// now from a server that presented serverChain, while holding the client
// certificate current (nil: none). b must still hold the CA that issued
// current, or else its active CA must verify the server: a bundle that
// would strand the node (it trusts neither its own issuer nor the server
// it got the bundle from) is refused.
func AcceptBundle(now time.Time, current *x509.Certificate, serverChain []*x509.Certificate, b *Bundle) error {
	if b == nil || b.Active == nil || len(b.Roots) == 0 {
		return fmt.Errorf("%w: empty", ErrBundle)
	}
	if current == nil || IssuedByAny(current, b.Roots) {
		return nil
	}
	if len(serverChain) > 0 {
		inter := x509.NewCertPool()
		for _, c := range serverChain[1:] {
			inter.AddCert(c)
		}
		active := x509.NewCertPool()
		active.AddCert(b.Active)
		_, err := serverChain[0].Verify(x509.VerifyOptions{Roots: active, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: it drops %s, the issuer of this node's client certificate, and its active CA %s does not verify the API server",
		ErrBundle, current.Issuer, b.ActivePin)
}

// Reissue says whether cert, held at now, must be re-issued at once
// because the bundle's active CA did not issue it (a rotation or a
// rollback is under way). A missing or expired certificate is Decide's
// business, not this one's.
func Reissue(now time.Time, cert *x509.Certificate, b *Bundle) bool {
	if cert == nil || b == nil || b.Active == nil || !now.Before(cert.NotAfter) {
		return false
	}
	return cert.CheckSignatureFrom(b.Active) != nil
}

// IssuedByAny reports whether one of roots signed cert.
func IssuedByAny(cert *x509.Certificate, roots []*x509.Certificate) bool {
	for _, r := range roots {
		if cert.CheckSignatureFrom(r) == nil {
			return true
		}
	}
	return false
}
