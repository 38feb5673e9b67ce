package pemkey

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
)

// Pin returns cert's public-key pin, "sha256:" and the lowercase hex
// SHA-256 of its DER SubjectPublicKeyInfo: the form of kubeadm's
// --discovery-token-ca-cert-hash, of the agent's caPin and of the CA names
// in the trust bundle. The control plane and the agent both use this one.
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}
