package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/harness"
)

// The admin commands against a running control plane, through the admin
// kubeconfig that init wrote.
func TestControlplaneAdminCommands(t *testing.T) {
	env := harness.Start(t, harness.Options{Clock: clock.Real{}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dd := []string{"--data-dir", env.Dir}
	must := func(args ...string) string {
		t.Helper()
		code, out, errOut := run(t, ctx, append(append([]string{"controlplane"}, args...), dd...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		return out
	}

	tok := strings.TrimSpace(must("token", "create", "--ttl", "1h", "--description", "pool a"))
	id, _, ok := strings.Cut(tok, ".")
	if !ok || len(id) != 6 {
		t.Fatalf("token create printed %q", tok)
	}
	if out := must("token", "list"); !strings.Contains(out, id) || !strings.Contains(out, "pool a") || strings.Contains(out, tok) {
		t.Fatalf("token list (must show the id, never the secret):\n%s", out)
	}
	must("token", "delete", id)
	if out := must("token", "list"); strings.Contains(out, id) {
		t.Fatalf("token %s still listed:\n%s", id, out)
	}

	must("instance", "register", "node-7", "--ip", "10.0.0.7", "--dns", "node-7.example.internal")
	if out := must("instance", "list"); !strings.Contains(out, "node-7") || !strings.Contains(out, "10.0.0.7") {
		t.Fatalf("instance list:\n%s", out)
	}
	must("instance", "delete", "node-7")

	// A request for the generic client signer waits for a person.
	cfg, err := loadAdminConfig(controlplane.Paths{DataDir: env.Dir}.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey()
	req, _ := pki.NewCSR(key, "alice", nil, nil, nil)
	obj := certv1.CertificateSigningRequest{
		TypeMeta:   metav1.TypeMeta{APIVersion: "certificates.k8s.io/v1", Kind: "CertificateSigningRequest"},
		ObjectMeta: metav1.ObjectMeta{Name: "alice-1"},
		Spec: certv1.CertificateSigningRequestSpec{Request: req, SignerName: "kubernetes.io/kube-apiserver-client",
			Usages: []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}},
	}
	if err := apiCall(ctx, cfg, http.MethodPost, "/apis/certificates.k8s.io/v1/certificatesigningrequests", &obj, nil); err != nil {
		t.Fatal(err)
	}
	if out := must("csr", "list"); !strings.Contains(out, "alice-1") || !strings.Contains(out, "Pending") {
		t.Fatalf("csr list:\n%s", out)
	}
	must("csr", "deny", "alice-1", "--message", "unknown person")
	if out := must("csr", "list"); !strings.Contains(out, "Denied") {
		t.Fatalf("csr list after deny:\n%s", out)
	}

	// Errors name what is wrong.
	code, _, errOut := run(t, ctx, "controlplane", "csr", "approve", "nope", "--data-dir", env.Dir)
	if code == 0 || !strings.Contains(errOut, "nope") {
		t.Fatalf("approving a missing request: exit %d, %q", code, errOut)
	}
	code, _, errOut = run(t, ctx, "controlplane", "token", "list", "--kubeconfig", "/nonexistent/kc")
	if code == 0 || !strings.Contains(errOut, "/nonexistent/kc") {
		t.Fatalf("missing kubeconfig: exit %d, %q", code, errOut)
	}
}
