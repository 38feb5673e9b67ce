package bootstrap

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/nodetrust/nodetrust/internal/pemkey"
)

// SPKIPin returns cert's public key pin, "sha256:" and the lowercase hex
// SHA-256 of its DER SubjectPublicKeyInfo, the format of kubeadm's
// --discovery-token-ca-cert-hash and of Config.CAPin.
func SPKIPin(cert *x509.Certificate) string { return pemkey.Pin(cert) }

// parsePin parses "sha256:<64 hex digits>" (hex in either case).
func parsePin(p string) ([]byte, error) {
	alg, h, ok := strings.Cut(p, ":")
	if !ok || !strings.EqualFold(alg, "sha256") {
		return nil, fmt.Errorf("%q: want sha256:<64 hex digits>", p)
	}
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("%q: want sha256:<64 hex digits>", p)
	}
	return b, nil
}

// checkPin reports whether a CA certificate of bundle has the pinned key.
func checkPin(bundle, pin []byte) error {
	certs, _ := ParseCerts(bundle)
	for _, c := range certs {
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		if isCA(c) && bytes.Equal(sum[:], pin) {
			return nil
		}
	}
	return fmt.Errorf("%w (%d certificates checked)", ErrPinMismatch, len(certs))
}

func isCA(c *x509.Certificate) bool { return c.BasicConstraintsValid && c.IsCA }

// parseCABundle returns the CERTIFICATE blocks of b, re-encoded, when
// they all parse and at least one is a CA certificate. Text between blocks
// is ignored; a block of another type (a key, say) is an error.
func parseCABundle(b []byte) ([]byte, error) {
	certs, err := ParseCerts(b)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	var out bytes.Buffer
	ca := false
	for _, c := range certs {
		ca = ca || isCA(c)
		pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	if !ca {
		return nil, fmt.Errorf("none of %d certificates is a CA certificate", len(certs))
	}
	return out.Bytes(), nil
}

// ParseCerts parses every PEM block of b as a certificate; a block of
// another type is an error naming it.
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; n++ {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return certs, nil
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %s, want CERTIFICATE", n, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		certs = append(certs, c)
	}
}

func firstCert(b []byte) (*x509.Certificate, error) {
	certs, err := ParseCerts(b)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs[0], nil
}

// decodePEMValue decodes a kube-env value: base64 of PEM (whitespace
// ignored, as YAML may fold it), or PEM itself. The error gives only the
// position of a bad byte.
func decodePEMValue(v string) ([]byte, error) {
	if strings.HasPrefix(v, "-----BEGIN ") {
		return []byte(v), nil
	}
	v = strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, v)
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return nil, fmt.Errorf("not base64: bad byte at offset %d", int64(ce))
		}
		return nil, errors.New("not base64")
	}
	return b, nil
}

// checkPair validates a client certificate (chain) and its private key,
// named certName and keyName in errors, and returns them re-encoded: the
// certificates, and the one key block.
func checkPair(certPEM, keyPEM []byte, certName, keyName string) (certOut, keyOut []byte, err error) {
	certs, err := ParseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certName, err)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", certName)
	}
	blk, rest := pem.Decode(keyPEM)
	if blk == nil {
		return nil, nil, fmt.Errorf("%s: no PEM block", keyName)
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, nil, fmt.Errorf("%s: more than one PEM block", keyName)
	}
	key, err := pemkey.Parse(blk)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyName, err)
	}
	if !pemkey.Matches(certs[0].PublicKey, key) {
		return nil, nil, fmt.Errorf("%s does not match the public key of %s", keyName, certName)
	}
	var cb bytes.Buffer
	for _, c := range certs {
		pem.Encode(&cb, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return cb.Bytes(), pem.EncodeToMemory(&pem.Block{Type: blk.Type, Bytes: blk.Bytes}), nil
}

// CheckPin returns nil when a CA certificate of the PEM bundle has the
// public key pin ("sha256:<hex>"), ErrInvalidConfig for a malformed pin
// and ErrPinMismatch otherwise.
func CheckPin(bundle []byte, pin string) error {
	p, err := parsePin(pin)
	if err != nil {
		return fmt.Errorf("%w: CAPin: %w", ErrInvalidConfig, err)
	}
	return checkPin(bundle, p)
}

// ParseCABundle returns the certificates of a PEM bundle re-encoded, when
// they all parse and at least one is a CA certificate (ErrBadCredential
// otherwise).
func ParseCABundle(b []byte) ([]byte, error) {
	out, err := parseCABundle(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCredential, err)
	}
	return out, nil
}
