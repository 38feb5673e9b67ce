package csr

import (
	"crypto"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/base64"
	"fmt"

	certv1 "k8s.io/api/certificates/v1"
)

// nameEncoding is lowercase, unpadded base32: the name stays a DNS-1123
// subdomain, which every API server accepts.
var nameEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Name returns the deterministic request name for a public key, subject
// and usages, as the kubelet derives one for its bootstrap request:
// "node-csr-" and a SHA-512/256 digest over the PKIX public key, the common
// name, each organization and each usage, every field base64url-encoded
// and followed by '|' so that no two inputs hash the same stream. The
// digest is written in lowercase base32, not the kubelet's base64url, so
// the name is also valid where names must be DNS-1123 subdomains.
//
// The same inputs always give the same name, so an agent restarted with
// the key it persisted finds its earlier request instead of posting a new
// one.
func Name(pub crypto.PublicKey, subject pkix.Name, usages []certv1.KeyUsage) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode public key: %w", err)
	}
	h := sha512.New512_256()
	field := func(b []byte) {
		h.Write(base64.RawURLEncoding.AppendEncode(nil, b))
		h.Write([]byte{'|'})
	}
	field(der)
	field([]byte(subject.CommonName))
	for _, o := range subject.Organization {
		field([]byte(o))
	}
	for _, u := range usages {
		field([]byte(u))
	}
	return "node-csr-" + nameEncoding.EncodeToString(h.Sum(nil)), nil
}
