package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
)

// Pin returns "sha256:<hex of the SubjectPublicKeyInfo>" of cert, the form
// in which CAs are named in trust bundles and by kubeadm's caCertHashes.
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}
