// Package pemkey parses PEM private-key blocks the same way everywhere in
// nodetrust, with errors that never quote the key material.
package pemkey

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// Parse parses a PRIVATE KEY (PKCS #8), EC PRIVATE KEY or RSA PRIVATE KEY
// block into a signer. Parser errors are replaced with the block type,
// since some describe the bytes they choked on.
func Parse(blk *pem.Block) (crypto.Signer, error) {
	var (
		k   any
		err error
	)
	switch blk.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %s, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s block does not parse", blk.Type)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s block holds a %T, not a signing key", blk.Type, k)
	}
	return s, nil
}

// Matches reports whether pub is the public half of key.
func Matches(pub crypto.PublicKey, key crypto.Signer) bool {
	e, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(pub)
}
