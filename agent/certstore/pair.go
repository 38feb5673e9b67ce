package certstore

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/nodetrust/nodetrust/internal/pemkey"
)

// parseStored parses a dated file: CERTIFICATE blocks, leaf first, then
// exactly one private key block, then nothing but white space.
func parseStored(b []byte) (*Pair, error) {
	var (
		certs  []*x509.Certificate
		keyBlk *pem.Block
	)
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("empty file")
	}
	rest := b
	for n := 1; ; n++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			if n == 1 {
				return nil, errors.New("no PEM block")
			}
			break
		}
		if keyBlk != nil {
			return nil, fmt.Errorf("PEM block %d (%s) after the key", n, blk.Type)
		}
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM block %d: %w", n, err)
			}
			certs = append(certs, c)
			continue
		}
		keyBlk = blk
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("truncated or trailing data after the last PEM block")
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	if keyBlk == nil {
		return nil, errors.New("no private key")
	}
	key, err := parseKey(keyBlk)
	if err != nil {
		return nil, err
	}
	return newPair(certs, key, keyBlk)
}

// parseInput parses Update's arguments: only CERTIFICATE blocks in
// certPEM, exactly one key block in keyPEM.
func parseInput(certPEM, keyPEM []byte) (*Pair, error) {
	var certs []*x509.Certificate
	rest := certPEM
	for n := 1; ; n++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("certificate PEM block %d is %s, want CERTIFICATE", n, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate PEM block %d: %w", n, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("certificate: trailing data after the last PEM block")
	}
	if len(certs) == 0 {
		return nil, errors.New("certificate: no PEM certificate")
	}
	keyBlk, rest := pem.Decode(keyPEM)
	if keyBlk == nil {
		return nil, errors.New("key: no PEM block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("key: more than one PEM block or trailing data")
	}
	key, err := parseKey(keyBlk)
	if err != nil {
		return nil, err
	}
	return newPair(certs, key, keyBlk)
}

// newPair checks that key matches the leaf and builds the Pair with
// canonical PEM.
func newPair(certs []*x509.Certificate, key crypto.Signer, keyBlk *pem.Block) (*Pair, error) {
	pub, ok := certs[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("private key does not match the certificate")
	}
	var cb bytes.Buffer
	tc := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs {
		pem.Encode(&cb, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return &Pair{
		Cert:    certs[0],
		Chain:   certs,
		Key:     key,
		TLS:     tc,
		CertPEM: cb.Bytes(),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: keyBlk.Type, Bytes: keyBlk.Bytes}),
	}, nil
}

// parseKey parses a private key block; errors never quote the key.
func parseKey(blk *pem.Block) (crypto.Signer, error) {
	k, err := pemkey.Parse(blk)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	return k, nil
}

// verifyChain checks that p's leaf chains to roots through p's other
// certificates, for any purpose. It checks signatures, not time: the
// chain is verified at the middle of the leaf's validity, so that clock
// skew on the node never makes a fresh certificate unstorable; the caller
// judges expiry.
func verifyChain(p *Pair, roots *x509.CertPool) error {
	inter := x509.NewCertPool()
	for _, c := range p.Chain[1:] {
		inter.AddCert(c)
	}
	leaf := p.Cert
	mid := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   mid.Truncate(time.Second),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("certificate does not chain to the roots: %w", err)
	}
	return nil
}
