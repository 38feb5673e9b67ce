package benchkit

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"net"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/pki"
)

// CA is a throwaway cluster CA for benchmarks.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	Pool *x509.CertPool
}

// NewCA makes a P-256 CA named name, valid for a day.
func NewCA(name string) (*CA, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	cert, err := pki.NewCA(name, key, time.Now().Add(-time.Minute), 24*time.Hour)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, Key: key, Pool: pool}, nil
}

// Leaf issues a client certificate, or with server set a serving one for
// localhost and 127.0.0.1.
func (c *CA) Leaf(cn string, orgs []string, server bool) (*tls.Certificate, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	spec := pki.LeafSpec{CommonName: cn, Organizations: orgs, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore:   time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour)}
	if server {
		spec.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		spec.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
		spec.DNSNames = []string{"localhost"}
	}
	cert, err := pki.Issue(spec, key.Public(), c.Cert, c.Key)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, nil
}
