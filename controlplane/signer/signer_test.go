package signer

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// TestSignerRevalidates checks that the signer refuses, on its own, what a
// compromised API process might send it.
func TestSignerRevalidates(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	caKey, _ := pki.GenerateKey()
	ca, err := pki.NewCA("ca", caKey, now, 24*time.Hour*365*5)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Config{CACert: ca, CAKey: caKey, Clock: clock.NewFake(now), MaxDuration: 48 * time.Hour})
	ln, err := Listen(filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	cl := NewClient(ln.Addr().String())
	defer cl.Close()

	approved := certv1.CertificateSigningRequestStatus{Conditions: []certv1.CertificateSigningRequestCondition{{Type: certv1.CertificateApproved, Status: "True"}}}
	mk := func(cn string, orgs []string, signer string, usages []certv1.KeyUsage, st certv1.CertificateSigningRequestStatus) *certv1.CertificateSigningRequest {
		key, _ := pki.GenerateKey()
		req, _ := pki.NewCSR(key, cn, orgs, nil, nil)
		return &certv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: "r"},
			Spec: certv1.CertificateSigningRequestSpec{Request: req, SignerName: signer, Usages: usages}, Status: st}
	}
	usages := []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}
	good := mk("system:node:n1", []string{"system:nodes"}, csrpolicy.SignerKubeletClient, usages, approved)
	pemCert, err := cl.Sign(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := pki.ParseCerts(pemCert)
	if cert[0].NotAfter.Sub(now) != 48*time.Hour || now.Sub(cert[0].NotBefore) != 5*time.Minute {
		t.Errorf("validity %v..%v, want now-5m..now+48h (capped)", cert[0].NotBefore, cert[0].NotAfter)
	}
	if err := cert[0].CheckSignatureFrom(ca); err != nil {
		t.Fatal(err)
	}

	short := good.DeepCopy()
	s := int32(300)
	short.Spec.ExpirationSeconds = &s
	denied := good.DeepCopy()
	denied.Status.Conditions = append(denied.Status.Conditions, certv1.CertificateSigningRequestCondition{Type: certv1.CertificateDenied, Status: "True"})
	issued := good.DeepCopy()
	issued.Status.Certificate = pemCert
	tampered := good.DeepCopy()
	tampered.Spec.Request = []byte(strings.Replace(string(tampered.Spec.Request), "A", "B", 1))
	for name, c := range map[string]*certv1.CertificateSigningRequest{
		"not approved":        mk("system:node:n1", []string{"system:nodes"}, csrpolicy.SignerKubeletClient, usages, certv1.CertificateSigningRequestStatus{}),
		"denied":              denied,
		"already issued":      issued,
		"masters via client":  mk("root", []string{"system:masters"}, csrpolicy.SignerAPIServerClient, usages, approved),
		"wrong kubelet org":   mk("system:node:n1", []string{"system:masters"}, csrpolicy.SignerKubeletClient, usages, approved),
		"unknown signer":      mk("x", nil, "example.com/any", usages, approved),
		"server usage client": mk("system:node:n1", []string{"system:nodes"}, csrpolicy.SignerKubeletClient, []certv1.KeyUsage{certv1.UsageServerAuth}, approved),
		"duration too short":  short,
		"tampered request":    tampered,
	} {
		if _, err := cl.Sign(ctx, c); !errors.Is(err, ErrRejected) {
			t.Errorf("%s: %v, want ErrRejected", name, err)
		}
	}
}

// TestBackdate: certificates start Backdate before now (5 minutes unless
// set), so renewal planned from NotBefore works for lifetimes of seconds.
func TestBackdate(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	caKey, _ := pki.GenerateKey()
	ca, err := pki.NewCA("ca", caKey, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	approved := certv1.CertificateSigningRequestStatus{Conditions: []certv1.CertificateSigningRequestCondition{{Type: certv1.CertificateApproved, Status: "True"}}}
	for _, tc := range []struct {
		backdate, want time.Duration
	}{{0, 5 * time.Minute}, {time.Second, time.Second}} {
		srv := New(Config{CACert: ca, CAKey: caKey, Clock: clock.NewFake(now), MaxDuration: 20 * time.Second, Backdate: tc.backdate})
		key, _ := pki.GenerateKey()
		req, _ := pki.NewCSR(key, "system:node:n1", []string{"system:nodes"}, nil, nil)
		pemCert, err := srv.Sign(&certv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: "r"},
			Spec: certv1.CertificateSigningRequestSpec{Request: req, SignerName: csrpolicy.SignerKubeletClient,
				Usages: []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}}, Status: approved})
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := pki.ParseCerts(pemCert)
		if got := now.Sub(cert[0].NotBefore); got != tc.want {
			t.Errorf("Backdate %v: starts %v before now, want %v", tc.backdate, got, tc.want)
		}
		if got := cert[0].NotAfter.Sub(now); got != 20*time.Second {
			t.Errorf("Backdate %v: ends %v after now, want 20s", tc.backdate, got)
		}
	}
}
