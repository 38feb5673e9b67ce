package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
)

// createP256 is x509.CreateCertificate for a CA key on P-256, without the
// verification of its own new signature that CreateCertificate makes
// after signing (one ECDSA verification, as costly as the signing). The
// to-be-signed part is still built by x509.CreateCertificate itself: the
// CA key is stood in for by tbsCapture, which receives the encoded
// TBSCertificate and stops there. The TBSCertificate is then signed with
// crypto/ecdsa and wrapped as RFC 5280 section 4.1 says:
//
//	Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }
//
// where signatureAlgorithm is the AlgorithmIdentifier the TBSCertificate
// itself carries. The result is parsed back by the caller.
//
// The self-check guards against crypto.Signer implementations (HSMs,
// remote signers) that return bad signatures; this path is only taken for
// an in-memory *ecdsa.PrivateKey, and every node still verifies the
// certificate against the CA.
func createP256(tmpl, ca *x509.Certificate, pub crypto.PublicKey, key *ecdsa.PrivateKey) ([]byte, error) {
	capture := &tbsCapture{pub: key.Public()}
	_, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, capture)
	if !errors.Is(err, errCaptured) {
		if err == nil {
			err = errors.New("x509.CreateCertificate did not pass the TBSCertificate to the signer")
		}
		return nil, err
	}
	if capture.opts == nil || capture.opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("x509.CreateCertificate asked for a P-256 signature with %v, want SHA-256", capture.opts)
	}
	algID, err := tbsSignatureAlgorithm(capture.tbs)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(algID, ecdsaWithSHA256) {
		return nil, fmt.Errorf("TBSCertificate signature algorithm is %x, want ecdsa-with-SHA256", algID)
	}
	digest := sha256.Sum256(capture.tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(struct {
		TBS       asn1.RawValue
		Algorithm asn1.RawValue
		Signature asn1.BitString
	}{
		TBS:       asn1.RawValue{FullBytes: capture.tbs},
		Algorithm: asn1.RawValue{FullBytes: algID},
		Signature: asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
}

// ecdsaWithSHA256 is the DER AlgorithmIdentifier of ecdsa-with-SHA256
// (1.2.840.10045.4.3.2, no parameters; RFC 5758 section 3.2).
var ecdsaWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}

var errCaptured = errors.New("TBSCertificate captured")

// tbsCapture stands in for a CA key: it has the key's public half, so
// that x509.CreateCertificate accepts it for the CA certificate, and it
// keeps the message it is asked to sign instead of signing it.
type tbsCapture struct {
	pub  crypto.PublicKey
	tbs  []byte
	opts crypto.SignerOpts
}

func (c *tbsCapture) Public() crypto.PublicKey { return c.pub }

// Sign is called only when the message was hashed already, which
// createP256 cannot use.
func (c *tbsCapture) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("x509.CreateCertificate passed a digest instead of the TBSCertificate")
}

// SignMessage is called by crypto.SignMessage with the whole message.
func (c *tbsCapture) SignMessage(_ io.Reader, msg []byte, opts crypto.SignerOpts) ([]byte, error) {
	c.tbs, c.opts = bytes.Clone(msg), opts
	return nil, errCaptured
}

// tbsSignatureAlgorithm returns the DER of the signature field of a
// TBSCertificate: SEQUENCE { [0] EXPLICIT version, serialNumber, signature, ... }.
func tbsSignatureAlgorithm(tbs []byte) ([]byte, error) {
	var seq asn1.RawValue
	if rest, err := asn1.Unmarshal(tbs, &seq); err != nil || len(rest) > 0 || seq.Tag != asn1.TagSequence {
		return nil, fmt.Errorf("TBSCertificate is not one SEQUENCE: %v", err)
	}
	rest := seq.Bytes
	var version, serial, alg asn1.RawValue
	for _, v := range []*asn1.RawValue{&version, &serial, &alg} {
		var err error
		if rest, err = asn1.Unmarshal(rest, v); err != nil {
			return nil, fmt.Errorf("TBSCertificate: %w", err)
		}
	}
	if version.Class != asn1.ClassContextSpecific || version.Tag != 0 || serial.Tag != asn1.TagInteger || alg.Tag != asn1.TagSequence {
		return nil, errors.New("TBSCertificate does not start with version, serial number and signature algorithm")
	}
	return alg.FullBytes, nil
}
