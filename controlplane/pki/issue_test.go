package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"net"
	"testing"
	"time"
)

// opaque hides the concrete key type, so that issue takes the plain
// x509.CreateCertificate path.
type opaque struct{ crypto.Signer }

func testCA(t testing.TB, key crypto.Signer, now time.Time) *x509.Certificate {
	t.Helper()
	ca, err := NewCA("test ca", key, now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestIssueP256MatchesCreateCertificate checks the P-256 path against
// x509.CreateCertificate: the same TBSCertificate byte for byte, a
// signature that verifies, and a chain that verifies for the usages.
func TestIssueP256MatchesCreateCertificate(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	caKey, _ := GenerateKey()
	ca := testCA(t, caKey, now)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	p256, _ := GenerateKey()
	client := LeafSpec{
		CommonName: "system:node:n1", Organizations: []string{"system:nodes"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore: now.Add(-Backdate), NotAfter: now.Add(24 * time.Hour),
	}
	serving := LeafSpec{
		CommonName: "system:node:n1", Organizations: []string{"system:nodes"},
		DNSNames: []string{"n1.example.internal", "n1"}, IPs: []net.IP{net.ParseIP("10.0.0.7"), net.ParseIP("fd00::7")},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore:   now.Add(-Backdate), NotAfter: now.Add(24 * time.Hour),
	}
	noOrg := client
	noOrg.CommonName, noOrg.Organizations = "alice", nil
	noOrg.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	pastCA := client
	pastCA.NotAfter = now.Add(365 * 24 * time.Hour)
	tests := []struct {
		name string
		spec LeafSpec
		pub  crypto.PublicKey
		eku  x509.ExtKeyUsage
	}{
		{"client P-256", client, p256.Public(), x509.ExtKeyUsageClientAuth},
		{"client P-384", client, p384.Public(), x509.ExtKeyUsageClientAuth},
		{"client RSA", client, rsaKey.Public(), x509.ExtKeyUsageClientAuth},
		{"client Ed25519", client, edPub, x509.ExtKeyUsageClientAuth},
		{"serving with SANs", serving, p256.Public(), x509.ExtKeyUsageServerAuth},
		{"no organization, two usages", noOrg, p256.Public(), x509.ExtKeyUsageServerAuth},
		{"cut to the CA's NotAfter", pastCA, p256.Public(), x509.ExtKeyUsageClientAuth},
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serial, _ := SerialNumber()
			got, err := issue(tt.spec, tt.pub, ca, caKey, serial)
			if err != nil {
				t.Fatal(err)
			}
			want, err := issue(tt.spec, tt.pub, ca, opaque{caKey}, new(big.Int).Set(serial))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.RawTBSCertificate, want.RawTBSCertificate) {
				t.Errorf("TBSCertificate differs from x509.CreateCertificate's:\n got %x\nwant %x", got.RawTBSCertificate, want.RawTBSCertificate)
			}
			if got.SignatureAlgorithm != x509.ECDSAWithSHA256 {
				t.Errorf("signature algorithm = %v, want %v", got.SignatureAlgorithm, x509.ECDSAWithSHA256)
			}
			if err := got.CheckSignatureFrom(ca); err != nil {
				t.Errorf("CheckSignatureFrom(ca) = %v", err)
			}
			if _, err := got.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{tt.eku}}); err != nil {
				t.Errorf("Verify = %v", err)
			}
			if !got.NotAfter.Equal(want.NotAfter) || got.NotAfter.After(ca.NotAfter) {
				t.Errorf("NotAfter = %v, want %v (not after the CA's %v)", got.NotAfter, want.NotAfter, ca.NotAfter)
			}
			// The certificate round-trips through PEM.
			back, err := ParseCerts(EncodeCert(got))
			if err != nil || !bytes.Equal(back[0].Raw, got.Raw) {
				t.Errorf("PEM round trip = %v", err)
			}
		})
	}
}

// TestIssueP256Rejects checks that a certificate from the P-256 path does
// not verify against another CA, nor with a changed byte anywhere in it.
func TestIssueP256Rejects(t *testing.T) {
	now := time.Now()
	caKey, _ := GenerateKey()
	ca := testCA(t, caKey, now)
	otherKey, _ := GenerateKey()
	other := testCA(t, otherKey, now)
	leafKey, _ := GenerateKey()
	c, err := Issue(LeafSpec{CommonName: "x", KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)},
		leafKey.Public(), ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSignatureFrom(other); err == nil {
		t.Error("certificate verifies against another CA")
	}
	for i := range c.Raw {
		b := bytes.Clone(c.Raw)
		b[i] ^= 0x01
		m, err := x509.ParseCertificate(b)
		if err != nil {
			continue
		}
		if err := m.CheckSignatureFrom(ca); err == nil {
			t.Errorf("byte %d changed, and the certificate still verifies", i)
		}
	}
}

// TestIssueOtherCAKeys checks the x509.CreateCertificate path still serves
// CA keys other than P-256.
func TestIssueOtherCAKeys(t *testing.T) {
	now := time.Now()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	leafKey, _ := GenerateKey()
	for name, key := range map[string]crypto.Signer{"P-384": p384, "Ed25519": ed} {
		ca := testCA(t, key, now)
		c, err := Issue(LeafSpec{CommonName: "x", NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)}, leafKey.Public(), ca, key)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := c.CheckSignatureFrom(ca); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func BenchmarkIssue(b *testing.B) {
	now := time.Now()
	caKey, _ := GenerateKey()
	ca := testCA(b, caKey, now)
	leafKey, _ := GenerateKey()
	spec := LeafSpec{CommonName: "system:node:n1", Organizations: []string{"system:nodes"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: now, NotAfter: now.Add(time.Hour)}
	for name, key := range map[string]crypto.Signer{"P256": caKey, "CreateCertificate": opaque{caKey}} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := Issue(spec, leafKey.Public(), ca, key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
