package controlplane_test

import (
	"context"
	"crypto/x509"
	"net"
	"slices"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestBootstrapAndRenewWithClientGo drives the kubelet's flow with the
// real client-go: a bootstrap token creates a client CSR, client-go's own
// WaitForCertificate (list+watch) waits for it, and the issued certificate
// then renews itself.
func TestBootstrapAndRenewWithClientGo(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t)
	boot := c.withToken(c.token(time.Hour))

	sv, err := boot.Discovery().ServerVersion()
	if err != nil || sv.Major != "1" {
		t.Fatalf("server version: %v, %v", sv, err)
	}

	obj, _, keyPEM := nodeCSR(t, "node-csr-Ab_Cd-node-1", // a kubelet-style base64url name
		"system:node:node-1", []string{"system:nodes"}, csrpolicy.SignerKubeletClient, clientUsages, nil, nil)
	d := 2 * time.Hour
	name, uid, err := csr.RequestCertificateWithContext(ctx, boot, obj.Spec.Request, obj.Name, obj.Spec.SignerName, &d, obj.Spec.Usages, nil)
	if err != nil {
		t.Fatalf("create CSR with bootstrap token: %v", err)
	}
	certPEM, err := csr.WaitForCertificate(ctx, boot, name, uid)
	if err != nil {
		t.Fatalf("wait for certificate: %v", err)
	}
	cert := parseCert(t, certPEM)
	now := c.clk.Now()
	if cert.Subject.CommonName != "system:node:node-1" || !slices.Equal(cert.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("subject %v", cert.Subject)
	}
	if got := now.Sub(cert.NotBefore); got != 5*time.Minute {
		t.Errorf("NotBefore is %v before now, want 5m", got)
	}
	if got := cert.NotAfter.Sub(now); got != 2*time.Hour {
		t.Errorf("lifetime %v, want the requested 2h", got)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ext key usage %v", cert.ExtKeyUsage)
	}
	got, err := boot.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Username == "" || !slices.Contains(got.Spec.Groups, "system:bootstrappers") {
		t.Errorf("spec.username %q groups %q", got.Spec.Username, got.Spec.Groups)
	}
	if cond := csrpolicy.Condition(got.Status, certv1.CertificateApproved); cond == nil || cond.Reason != "AutoApproved" {
		t.Errorf("conditions %+v", got.Status.Conditions)
	}

	// Renewal: the node authenticates with its certificate.
	node := c.withCert(certPEM, keyPEM)
	obj2, _, _ := nodeCSR(t, "", "system:node:node-1", []string{"system:nodes"}, csrpolicy.SignerKubeletClient, clientUsages, nil, nil)
	name2, uid2, err := csr.RequestCertificateWithContext(ctx, node, obj2.Spec.Request, "", obj2.Spec.SignerName, nil, obj2.Spec.Usages, nil)
	if err != nil {
		t.Fatalf("renewal CSR: %v", err)
	}
	cert2PEM, err := csr.WaitForCertificate(ctx, node, name2, uid2)
	if err != nil {
		t.Fatalf("wait for renewal: %v", err)
	}
	if got := parseCert(t, cert2PEM).NotAfter.Sub(c.clk.Now()); got != 365*24*time.Hour {
		t.Errorf("default lifetime %v, want one year", got)
	}
	got2, _ := node.CertificatesV1().CertificateSigningRequests().Get(ctx, name2, metav1.GetOptions{})
	if got2.Spec.Username != "system:node:node-1" {
		t.Errorf("renewal requested by %q", got2.Spec.Username)
	}

	// The node sees only its own requests.
	list, err := node.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 || list.Items[0].Name != name2 {
		t.Fatalf("node lists %d requests (%v), want only its renewal", len(list.Items), err)
	}
	if _, err := node.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node reads the bootstrapper's request: %v, want Forbidden", err)
	}
	// The admin sees both.
	all, err := c.admin().CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil || len(all.Items) != 2 {
		t.Fatalf("admin lists %d (%v), want 2", len(all.Items), err)
	}

	// Serving certificate for names node-1 owns: approved; for others: refused.
	srvObj, _, _ := nodeCSR(t, "serving-1", "system:node:node-1", []string{"system:nodes"}, csrpolicy.SignerKubeletServing,
		[]certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageServerAuth}, []string{"node-1.example.internal"}, []net.IP{net.ParseIP("10.0.0.11")})
	name3, uid3, err := csr.RequestCertificateWithContext(ctx, node, srvObj.Spec.Request, srvObj.Name, srvObj.Spec.SignerName, nil, srvObj.Spec.Usages, nil)
	if err != nil {
		t.Fatalf("serving CSR: %v", err)
	}
	servPEM, err := csr.WaitForCertificate(ctx, node, name3, uid3)
	if err != nil {
		t.Fatalf("wait for serving certificate: %v", err)
	}
	if sc := parseCert(t, servPEM); !slices.Equal(sc.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) || len(sc.IPAddresses) != 1 {
		t.Errorf("serving cert EKU %v IPs %v", sc.ExtKeyUsage, sc.IPAddresses)
	}
}
