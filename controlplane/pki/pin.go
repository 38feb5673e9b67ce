package pki

import (
	"crypto/x509"

	"github.com/nodetrust/nodetrust/internal/pemkey"
)

// Pin returns "sha256:<hex of the SubjectPublicKeyInfo>" of cert, the form
// in which CAs are named in trust bundles and by kubeadm's caCertHashes.
func Pin(cert *x509.Certificate) string { return pemkey.Pin(cert) }
