// Package pki generates the control plane's keys and certificates, reads
// and writes them as PEM, writes files crash-safely and builds kubeconfigs.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Backdate is how far before "now" every certificate's NotBefore is set,
// so that a node whose clock runs a few minutes slow accepts it at once.
const Backdate = 5 * time.Minute

// ErrBadPEM is wrapped by every error about PEM input that does not hold
// what was expected.
var ErrBadPEM = errors.New("bad PEM")

// GenerateKey returns a new ECDSA P-256 private key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate P-256 key: %w", err)
	}
	return k, nil
}

// SerialNumber returns a random positive 128-bit serial number.
func SerialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// NewCA returns a self-signed CA certificate for key, valid from
// now-Backdate for validity.
func NewCA(commonName string, key crypto.Signer, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	serial, err := SerialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate %q: %w", commonName, err)
	}
	return x509.ParseCertificate(der)
}

// LeafSpec describes a leaf certificate to issue.
type LeafSpec struct {
	CommonName    string
	Organizations []string
	DNSNames      []string
	IPs           []net.IP
	KeyUsage      x509.KeyUsage
	ExtKeyUsage   []x509.ExtKeyUsage
	NotBefore     time.Time
	NotAfter      time.Time
}

// Issue signs a leaf certificate for pub with the CA's key. NotAfter is cut
// to the CA's own NotAfter.
func Issue(spec LeafSpec, pub crypto.PublicKey, ca *x509.Certificate, caKey crypto.Signer) (*x509.Certificate, error) {
	serial, err := SerialNumber()
	if err != nil {
		return nil, err
	}
	return issue(spec, pub, ca, caKey, serial)
}

func issue(spec LeafSpec, pub crypto.PublicKey, ca *x509.Certificate, caKey crypto.Signer, serial *big.Int) (*x509.Certificate, error) {
	notAfter := spec.NotAfter
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: spec.CommonName, Organization: spec.Organizations},
		DNSNames:              spec.DNSNames,
		IPAddresses:           spec.IPs,
		NotBefore:             spec.NotBefore,
		NotAfter:              notAfter,
		KeyUsage:              spec.KeyUsage,
		ExtKeyUsage:           spec.ExtKeyUsage,
		BasicConstraintsValid: true,
	}
	var der []byte
	var err error
	if k, ok := caKey.(*ecdsa.PrivateKey); ok && k.Curve == elliptic.P256() {
		der, err = createP256(tmpl, ca, pub, k)
	} else {
		der, err = x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	}
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %q: %w", spec.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

// EncodeCert returns cert as a PEM CERTIFICATE block.
func EncodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// EncodeKey returns key as a PEM PRIVATE KEY (PKCS #8) block.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCerts returns every CERTIFICATE block of b, at least one.
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: parse certificate: %v", ErrBadPEM, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no CERTIFICATE block", ErrBadPEM)
	}
	return certs, nil
}

// ParseKey returns the first private key block of b (PKCS #8, EC or
// PKCS #1).
func ParseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%w: no private key block", ErrBadPEM)
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: parse %s: %v", ErrBadPEM, blk.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%w: key of type %T cannot sign", ErrBadPEM, k)
		}
		return s, nil
	}
}

// ParseCSR decodes exactly one CERTIFICATE REQUEST block and checks its
// self-signature.
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	csr, err := ParseCSRUnverified(b)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature does not verify: %w", err)
	}
	return csr, nil
}

// ParseCSRUnverified is ParseCSR without the signature check, for requests
// whose signature was checked when they were accepted.
func ParseCSRUnverified(b []byte) (*x509.CertificateRequest, error) {
	blk, rest := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%w: no PEM block in the request", ErrBadPEM)
	}
	if blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: PEM block is %q, want CERTIFICATE REQUEST", ErrBadPEM, blk.Type)
	}
	if len(rest) > 0 {
		if next, _ := pem.Decode(rest); next != nil {
			return nil, fmt.Errorf("%w: more than one PEM block in the request", ErrBadPEM)
		}
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: parse certificate request: %v", ErrBadPEM, err)
	}
	return csr, nil
}

// NewCSR returns a PEM certificate request for key.
func NewCSR(key crypto.Signer, commonName string, orgs []string, dnsNames []string, ips []net.IP) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: commonName, Organization: orgs},
		DNSNames:    dnsNames,
		IPAddresses: ips,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
