package benchkit

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
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

// Connect opens an HTTP CONNECT tunnel to target through the proxy at
// network/addr and returns the connection once the proxy answered 200.
func Connect(ctx context.Context, network, addr, target string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		c.Close()
		return nil, err
	}
	// Read the answer byte by byte so no tunnel bytes are buffered away.
	var head []byte
	b := make([]byte, 1)
	for !strings.HasSuffix(string(head), "\r\n\r\n") {
		if _, err := c.Read(b); err != nil {
			c.Close()
			return nil, fmt.Errorf("CONNECT answer: %w", err)
		}
		head = append(head, b[0])
		if len(head) > 4096 {
			c.Close()
			return nil, errors.New("CONNECT answer too long")
		}
	}
	if !strings.HasPrefix(string(head), "HTTP/1.1 200") {
		c.Close()
		return nil, fmt.Errorf("CONNECT refused: %q", strings.SplitN(string(head), "\r\n", 2)[0])
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
