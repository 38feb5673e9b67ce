package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/signer"
)

// TestSignerLifetimeFlags: --duration and --backdate reach the signed
// certificates.
func TestSignerLifetimeFlags(t *testing.T) {
	dir, err := os.MkdirTemp("", "ntsig") // UNIX socket paths are short
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, controlplane.Init(controlplane.InitOptions{DataDir: dir}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		code, _, _ := run(t, ctx, "controlplane", "signer", "--data-dir", dir, "--duration", "2m", "--backdate", "20s")
		done <- code
	}()
	t.Cleanup(func() {
		cancel()
		require.Equal(t, 0, <-done)
	})
	sock := controlplane.Paths{DataDir: dir}.SignerSocket()
	require.Eventually(t, func() bool { _, err := os.Stat(sock); return err == nil }, 10*time.Second, 10*time.Millisecond)

	key, err := pki.GenerateKey()
	require.NoError(t, err)
	req, err := pki.NewCSR(key, "system:node:n1", []string{"system:nodes"}, nil, nil)
	require.NoError(t, err)
	csr := &certv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec: certv1.CertificateSigningRequestSpec{Request: req, SignerName: csrpolicy.SignerKubeletClient,
			Usages: []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}},
		Status: certv1.CertificateSigningRequestStatus{Conditions: []certv1.CertificateSigningRequestCondition{
			{Type: certv1.CertificateApproved, Status: "True"}}}}
	cl := signer.NewClient(sock)
	defer cl.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	b, err := cl.Sign(sctx, csr)
	require.NoError(t, err)
	certs, err := pki.ParseCerts(b)
	require.NoError(t, err)
	require.Equal(t, 2*time.Minute+20*time.Second, certs[0].NotAfter.Sub(certs[0].NotBefore))
}
