package controlplane_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

// TestRestartMidFlow stops both processes while a request is approved but
// not yet signed; after the restart the same token still works and
// client-go's wait completes.
func TestRestartMidFlow(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t)
	tok := c.token(time.Hour)
	caBefore := c.caPEM
	c.stopSg() // the signer is down: the request will be approved, not signed

	boot := c.withToken(tok)
	obj, _, _ := nodeCSR(t, "node-csr-restart", "system:node:node-1", []string{"system:nodes"}, csrpolicy.SignerKubeletClient, clientUsages, nil, nil)
	name, uid, err := csr.RequestCertificateWithContext(ctx, boot, obj.Spec.Request, obj.Name, obj.Spec.SignerName, nil, obj.Spec.Usages, nil)
	if err != nil {
		t.Fatal(err)
	}
	for {
		got, err := boot.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if csrpolicy.StateOf(got.Status) == csrpolicy.Approved {
			break
		}
		time.Sleep(5 * time.Millisecond) // waiting on the real controller goroutine, not on time
	}
	c.stop()

	c.startSigner()
	c.start()
	if ca, _ := os.ReadFile(controlplane.Paths{DataDir: c.dir}.CACert()); !bytes.Equal(ca, caBefore) {
		t.Fatal("CA changed across restart")
	}
	boot = c.withToken(tok) // the token survived
	certPEM, err := csr.WaitForCertificate(ctx, boot, name, uid)
	if err != nil {
		t.Fatalf("wait after restart: %v", err)
	}
	if parseCert(t, certPEM).Subject.CommonName != "system:node:node-1" {
		t.Fatal("wrong certificate")
	}
}

// TestManualApprovalAndDenial: requests the approver does not recognise
// stay pending until an admin decides with client-go's UpdateApproval.
func TestManualApprovalAndDenial(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t)
	admin := c.admin()
	api := admin.CertificatesV1().CertificateSigningRequests()
	mk := func(name string) *certv1.CertificateSigningRequest {
		o, _, _ := nodeCSR(t, name, "alice", []string{"devs"}, csrpolicy.SignerAPIServerClient, clientUsages, nil, nil)
		created, err := api.Create(ctx, o, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return created
	}
	a, d := mk("alice-1"), mk("alice-2")
	if got, _ := api.Get(ctx, a.Name, metav1.GetOptions{}); csrpolicy.StateOf(got.Status) != csrpolicy.Pending {
		t.Fatalf("kube-apiserver-client request auto-decided: %+v", got.Status)
	}
	a.Status.Conditions = append(a.Status.Conditions, certv1.CertificateSigningRequestCondition{Type: certv1.CertificateApproved, Status: "True", Reason: "AdminApproved"})
	if _, err := api.UpdateApproval(ctx, a.Name, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d.Status.Conditions = append(d.Status.Conditions, certv1.CertificateSigningRequestCondition{Type: certv1.CertificateDenied, Status: "True", Reason: "AdminDenied", Message: "not today"})
	if _, err := api.UpdateApproval(ctx, d.Name, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	certPEM, err := csr.WaitForCertificate(ctx, admin, a.Name, a.UID)
	if err != nil {
		t.Fatal(err)
	}
	if parseCert(t, certPEM).Subject.CommonName != "alice" {
		t.Fatal("wrong subject")
	}
	if _, err := csr.WaitForCertificate(ctx, admin, d.Name, d.UID); err == nil || !strings.Contains(err.Error(), "denied") {
		t.Fatalf("denied request: %v", err)
	}
	// Stale resourceVersion conflicts.
	if _, err := api.UpdateApproval(ctx, a.Name, a, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "modified") {
		t.Fatalf("stale approval: %v, want Conflict", err)
	}
}

// TestCollectOldRequests checks the cleaner's ages with the fake clock.
func TestCollectOldRequests(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t)
	api := c.admin().CertificatesV1().CertificateSigningRequests()
	issueNodeCert(t, c, "node-1") // issued
	o, _, _ := nodeCSR(t, "pending", "bob", nil, csrpolicy.SignerAPIServerClient, clientUsages, nil, nil)
	if _, err := api.Create(ctx, o, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.token(30 * time.Minute) // expires before the first collection
	count := func() int {
		l, err := api.List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}
	c.clk.Advance(59 * time.Minute)
	if n, _ := c.srv.Controller.Collect(c.clk.Now()); n != 0 || count() != 2 {
		t.Fatalf("collected %d before an hour", n)
	}
	c.clk.Advance(time.Minute)
	if n, _ := c.srv.Controller.Collect(c.clk.Now()); n != 1 || count() != 1 {
		t.Fatalf("collected %d at one hour, want the issued one", n)
	}
	c.clk.Advance(23 * time.Hour)
	if n, _ := c.srv.Controller.Collect(c.clk.Now()); n != 1 || count() != 0 {
		t.Fatalf("collected %d at 24 h, want the pending one", n)
	}
	if ts, _ := c.srv.Tokens.List(); len(ts) != 0 {
		t.Fatalf("%d expired tokens left", len(ts))
	}
}

// TestEtcdCANotTrustedForClients: a certificate from the etcd CA, even
// claiming system:masters, cannot use the API.
func TestEtcdCANotTrustedForClients(t *testing.T) {
	c := newCluster(t)
	p := controlplane.Paths{DataDir: c.dir}
	etcdCAPEM, _ := os.ReadFile(p.EtcdCACert())
	etcdKey, err := pki.ReadKeyFile(p.EtcdCAKey())
	if err != nil {
		t.Fatal(err)
	}
	etcdCA, _ := pki.ParseCerts(etcdCAPEM)
	key, _ := pki.GenerateKey()
	now := c.clk.Now()
	cert, err := pki.Issue(pki.LeafSpec{CommonName: "mallory", Organizations: []string{"system:masters"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)}, key.Public(), etcdCA[0], etcdKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.EncodeKey(key)
	cl := c.withCert(pki.EncodeCert(cert), keyPEM)
	if _, err := cl.CertificatesV1().CertificateSigningRequests().List(ctxT(t), metav1.ListOptions{}); err == nil {
		t.Fatal("etcd-CA client certificate was accepted by the API")
	}
	// Key files are 0600.
	for _, k := range []string{p.CAKey(), p.EtcdCAKey(), p.APIServerKey(), p.AdminKey(), p.AdminKubeconfig(), filepath.Join(c.dir, "store", "wal")} {
		fi, err := os.Stat(k)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", k, fi.Mode().Perm(), err)
		}
	}
}

// TestSignerRefusesLooseKeyMode: the signer will not start on a key file
// others can read.
func TestSignerRefusesLooseKeyMode(t *testing.T) {
	dir := t.TempDir()
	if err := controlplane.Init(controlplane.InitOptions{DataDir: dir}); err != nil {
		t.Fatal(err)
	}
	p := controlplane.Paths{DataDir: dir}
	os.Chmod(p.CAKey(), 0o640)
	err := controlplane.RunSigner(ctxT(t), controlplane.SignerConfig{DataDir: dir, Socket: filepath.Join(dir, "s.sock")})
	if err == nil || !strings.Contains(err.Error(), p.CAKey()) || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("RunSigner with a 0640 key: %v", err)
	}
	if err := controlplane.Init(controlplane.InitOptions{DataDir: dir}); err == nil {
		t.Fatal("second init succeeded")
	}
}
