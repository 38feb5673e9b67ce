package pemkey

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 1024)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(ec)
	sec1, _ := x509.MarshalECPrivateKey(ec)
	tests := []struct {
		name string
		blk  *pem.Block
		ok   bool
	}{
		{"pkcs8", &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}, true},
		{"sec1", &pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}, true},
		{"pkcs1", &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}, true},
		{"wrong type", &pem.Block{Type: "CERTIFICATE", Bytes: pkcs8}, false},
		{"garbage", &pem.Block{Type: "PRIVATE KEY", Bytes: []byte("secret-bytes-here")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := Parse(tt.blk)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil && strings.Contains(err.Error(), "secret-bytes") {
				t.Fatal("error quotes key material")
			}
			if err == nil && !Matches(k.Public(), k) {
				t.Fatal("key does not match itself")
			}
		})
	}
	if Matches(rk.Public(), ec) {
		t.Fatal("different keys match")
	}
}

func TestPin(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	want := "sha256:" + hex.EncodeToString(sum[:])
	if got := Pin(&x509.Certificate{RawSubjectPublicKeyInfo: der}); got != want {
		t.Fatalf("Pin = %s, want %s", got, want)
	}
}
