package controlplane

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/rotation"
	"github.com/nodetrust/nodetrust/controlplane/signer"
)

// prepareCA has the signer make CA id, with an admin and a serving
// certificate for keys made here first. Keys are written before the
// signer is asked, and the signer answers the same for the same id, so
// a crash anywhere in between is repaired by running start again.
func (r *rotator) prepareCA(ctx context.Context, id int) (rotation.CA, error) {
	if err := os.MkdirAll(r.paths.caDir(id), 0o700); err != nil {
		return rotation.CA{}, fmt.Errorf("rotate start: %w", err)
	}
	servingCrt, servingKeyPath := r.paths.servingPair(id)
	adminCrt, adminKeyPath := r.paths.adminPair(id)
	servingKey, err := keyFile(servingKeyPath)
	if err != nil {
		return rotation.CA{}, err
	}
	adminKey, err := keyFile(adminKeyPath)
	if err != nil {
		return rotation.CA{}, err
	}
	// The serving certificate keeps the names of the one made by init.
	cur, err := tls.LoadX509KeyPair(r.paths.APIServerCert(), r.paths.APIServerKey())
	if err != nil {
		return rotation.CA{}, fmt.Errorf("rotate start: API serving pair %s: %w", r.paths.APIServerCert(), err)
	}
	leaf, err := x509.ParseCertificate(cur.Certificate[0])
	if err != nil {
		return rotation.CA{}, fmt.Errorf("rotate start: %s: %w", r.paths.APIServerCert(), err)
	}
	servingCSR, err := pki.NewCSR(servingKey, signer.ServingCommonName, nil, leaf.DNSNames, leaf.IPAddresses)
	if err != nil {
		return rotation.CA{}, err
	}
	adminCSR, err := pki.NewCSR(adminKey, signer.AdminCommonName, []string{csrpolicy.MastersGroup}, nil, nil)
	if err != nil {
		return rotation.CA{}, err
	}
	a, err := r.signer.CreateCA(ctx, signer.CreateRequest{ID: id, AdminCSR: adminCSR, ServingCSR: servingCSR})
	if err != nil {
		return rotation.CA{}, fmt.Errorf("rotate start: signer: %w", err)
	}
	cas, err := pki.ParseCerts(a.CA)
	if err != nil {
		return rotation.CA{}, fmt.Errorf("rotate start: signer's new CA: %w", err)
	}
	ca := cas[0]
	for _, c := range []struct {
		b    []byte
		key  crypto.Signer
		path string
	}{{a.Serving, servingKey, servingCrt}, {a.Admin, adminKey, adminCrt}} {
		certs, err := pki.ParseCerts(c.b)
		if err != nil {
			return rotation.CA{}, fmt.Errorf("rotate start: signer's certificate for %s: %w", c.path, err)
		}
		if err := certs[0].CheckSignatureFrom(ca); err != nil || !samePublic(certs[0].PublicKey, c.key.Public()) {
			return rotation.CA{}, fmt.Errorf("rotate start: signer's certificate for %s is not for this key under the new CA (was %s made by an earlier start? delete %s and run start again)", c.path, c.path, r.paths.caDir(id))
		}
		if err := pki.WriteFile(c.path, c.b, 0o644); err != nil {
			return rotation.CA{}, err
		}
	}
	if err := pki.WriteFile(filepath.Join(r.paths.caDir(id), "ca.crt"), a.CA, 0o644); err != nil {
		return rotation.CA{}, err
	}
	return rotation.CA{ID: id, Pin: pki.Pin(ca), Cert: pki.EncodeCert(ca)}, nil
}

// keyFile reads the key at path, or makes and writes one (0600).
func keyFile(path string) (crypto.Signer, error) {
	if _, err := os.Stat(path); err == nil {
		return pki.ReadKeyFile(path)
	}
	k, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	b, err := pki.EncodeKey(k)
	if err != nil {
		return nil, err
	}
	return k, pki.WriteFile(path, b, 0o600)
}

func samePublic(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
