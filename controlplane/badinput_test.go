package controlplane_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/csrs"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

// post sends body to the CSR collection with a bearer token and returns
// the status code and decoded metav1.Status.
func (c *cluster) post(t *testing.T, token string, body []byte) (int, metav1.Status) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.caPEM)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	req, _ := http.NewRequest("POST", "https://"+c.addr+"/apis/certificates.k8s.io/v1/certificatesigningrequests", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st metav1.Status
	json.NewDecoder(resp.Body).Decode(&st)
	return resp.StatusCode, st
}

func csrJSON(t *testing.T, obj *certv1.CertificateSigningRequest) []byte {
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBadInputIsRefusedAndNothingStored sends every kind of bad request
// and checks the 4xx status and that the store did not change.
func TestBadInputIsRefusedAndNothingStored(t *testing.T) {
	c := newCluster(t)
	tok := c.token(time.Hour)
	expired := c.token(time.Minute)
	c.clk.Advance(2 * time.Minute)

	good, _, _ := nodeCSR(t, "good", "system:node:node-1", []string{"system:nodes"}, csrpolicy.SignerKubeletClient, clientUsages, nil, nil)
	mut := func(f func(o *certv1.CertificateSigningRequest)) []byte {
		o := good.DeepCopy()
		f(o)
		return csrJSON(t, o)
	}
	// A request whose signature does not verify: flip a byte of the signature.
	blk := good.Spec.Request
	der, _ := pki.ParseCSR(blk)
	raw := bytes.Clone(der.Raw)
	raw[len(raw)-3] ^= 0xff
	badSig := mut(func(o *certv1.CertificateSigningRequest) {
		o.Spec.Request = []byte("-----BEGIN CERTIFICATE REQUEST-----\n" + b64lines(raw) + "-----END CERTIFICATE REQUEST-----\n")
	})
	node1Cert, node1Key := issueNodeCert(t, c, "node-1")

	cases := []struct {
		name   string
		token  string
		body   []byte
		code   int
		reason metav1.StatusReason
		msg    string
	}{
		{"no credentials", "", csrJSON(t, good), 401, metav1.StatusReasonUnauthorized, "authentication required"},
		{"unknown token", "abcdef.0123456789abcdef", csrJSON(t, good), 401, metav1.StatusReasonUnauthorized, "unknown bootstrap token"},
		{"malformed token", "not-a-token", csrJSON(t, good), 401, metav1.StatusReasonUnauthorized, "malformed"},
		{"expired token", expired, csrJSON(t, good), 401, metav1.StatusReasonUnauthorized, "expired"},
		{"malformed JSON", tok, []byte(`{"metadata":`), 400, metav1.StatusReasonBadRequest, "decode"},
		{"wrong kind", tok, []byte(`{"kind":"Pod","apiVersion":"v1"}`), 400, metav1.StatusReasonBadRequest, "want certificates.k8s.io/v1"},
		{"oversized body", tok, bytes.Repeat([]byte(" "), 300<<10), 413, metav1.StatusReasonRequestEntityTooLarge, "limit"},
		{"malformed PEM", tok, mut(func(o *certv1.CertificateSigningRequest) { o.Spec.Request = []byte("garbage") }), 422, metav1.StatusReasonInvalid, "no PEM block"},
		{"wrong PEM type", tok, mut(func(o *certv1.CertificateSigningRequest) { o.Spec.Request = c.caPEM }), 422, metav1.StatusReasonInvalid, "want CERTIFICATE REQUEST"},
		{"signature does not verify", tok, badSig, 422, metav1.StatusReasonInvalid, "signature"},
		{"no name", tok, mut(func(o *certv1.CertificateSigningRequest) { o.Name = "" }), 422, metav1.StatusReasonInvalid, "name or generateName is required"},
		{"name with a slash", tok, mut(func(o *certv1.CertificateSigningRequest) { o.Name = "a/b" }), 422, metav1.StatusReasonInvalid, "metadata.name"},
		{"name dot-dot", tok, mut(func(o *certv1.CertificateSigningRequest) { o.Name = ".." }), 422, metav1.StatusReasonInvalid, "metadata.name"},
		{"unknown signer", tok, mut(func(o *certv1.CertificateSigningRequest) { o.Spec.SignerName = "example.com/x" }), 422, metav1.StatusReasonInvalid, "signerName"},
		{"expiration too short", tok, mut(func(o *certv1.CertificateSigningRequest) { s := int32(599); o.Spec.ExpirationSeconds = &s }), 422, metav1.StatusReasonInvalid, "600 seconds"},
		{"wrong subject organization", tok, reqWith(t, good, "system:node:node-1", []string{"system:masters"}, nil, nil), 422, metav1.StatusReasonInvalid, "organization"},
		{"wrong subject CN", tok, reqWith(t, good, "admin", []string{"system:nodes"}, nil, nil), 422, metav1.StatusReasonInvalid, "common name"},
		{"client cert with SANs", tok, reqWith(t, good, "system:node:node-1", []string{"system:nodes"}, []string{"x"}, nil), 422, metav1.StatusReasonInvalid, "subject alternative names"},
		{"wrong usages", tok, mut(func(o *certv1.CertificateSigningRequest) { o.Spec.Usages = []certv1.KeyUsage{certv1.UsageServerAuth} }), 422, metav1.StatusReasonInvalid, "usages"},
		{"bootstrapper asks for serving cert", tok, servingReq(t, good, "node-1", []string{"node-1.example.internal"}, nil), 403, metav1.StatusReasonForbidden, "may only request"},
	}
	before := c.srv.Store.RV()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, st := c.post(t, tc.token, tc.body)
			if code != tc.code || st.Reason != tc.reason || st.Kind != "Status" || !strings.Contains(st.Message, tc.msg) {
				t.Errorf("got %d %s %q, want %d %s containing %q", code, st.Reason, st.Message, tc.code, tc.reason, tc.msg)
			}
			if strings.Contains(st.Message, strings.Split(tok, ".")[1]) {
				t.Errorf("token secret in the answer: %q", st.Message)
			}
		})
	}

	// A node asking for another node's name, and for names it does not own.
	node := c.withCert(node1Cert, node1Key)
	ctx := ctxT(t)
	other, _, _ := nodeCSR(t, "other", "system:node:node-2", []string{"system:nodes"}, csrpolicy.SignerKubeletClient, clientUsages, nil, nil)
	if _, err := node.CertificatesV1().CertificateSigningRequests().Create(ctx, other, metav1.CreateOptions{}); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "node-2") {
		t.Errorf("node-1 asking for node-2: %v, want Forbidden naming node-2", err)
	}
	for _, sans := range []struct {
		dns []string
		ips []net.IP
		msg string
	}{
		{[]string{"evil.example.com"}, nil, `"evil.example.com"`},
		{[]string{"node-1.example.internal"}, []net.IP{net.ParseIP("10.9.9.9")}, "10.9.9.9"},
	} {
		s := servingObj(t, "node-1", sans.dns, sans.ips)
		if _, err := node.CertificatesV1().CertificateSigningRequests().Create(ctx, s, metav1.CreateOptions{}); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), sans.msg) {
			t.Errorf("serving SANs %v %v: %v, want Forbidden naming %s", sans.dns, sans.ips, err, sans.msg)
		}
	}
	// Bootstrappers and nodes may not approve, delete or touch status.
	if err := node.CertificatesV1().CertificateSigningRequests().Delete(ctx, "x", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node delete: %v, want Forbidden", err)
	}
	if _, err := node.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, "x", good, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node approve: %v, want Forbidden", err)
	}
	if after := c.srv.Store.RV(); after != before {
		t.Errorf("store changed from rv %d to %d after refused requests", before, after)
	}
	if l, _ := c.srv.Store.List(csrs.Kind); len(l) != 1 { // only issueNodeCert's own request
		t.Errorf("%d requests stored, want 1", len(l))
	}
}

func b64lines(der []byte) string {
	b, _ := json.Marshal(der) // standard base64 in quotes
	s := strings.Trim(string(b), `"`)
	var out strings.Builder
	for len(s) > 64 {
		out.WriteString(s[:64] + "\n")
		s = s[64:]
	}
	out.WriteString(s + "\n")
	return out.String()
}

func reqWith(t *testing.T, base *certv1.CertificateSigningRequest, cn string, orgs, dns []string, ips []net.IP) []byte {
	o, _, _ := nodeCSR(t, base.Name, cn, orgs, base.Spec.SignerName, base.Spec.Usages, dns, ips)
	return csrJSON(t, o)
}

func servingObj(t *testing.T, node string, dns []string, ips []net.IP) *certv1.CertificateSigningRequest {
	o, _, _ := nodeCSR(t, "serving-"+node, "system:node:"+node, []string{"system:nodes"}, csrpolicy.SignerKubeletServing,
		[]certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageServerAuth}, dns, ips)
	return o
}

func servingReq(t *testing.T, _ *certv1.CertificateSigningRequest, node string, dns []string, ips []net.IP) []byte {
	return csrJSON(t, servingObj(t, node, dns, ips))
}

// issueNodeCert bootstraps node through the API and returns its client
// certificate and key.
func issueNodeCert(t *testing.T, c *cluster, node string) ([]byte, []byte) {
	t.Helper()
	ctx := ctxT(t)
	boot := c.withToken(c.token(time.Hour))
	obj, _, keyPEM := nodeCSR(t, "boot-"+node, "system:node:"+node, []string{"system:nodes"}, csrpolicy.SignerKubeletClient, clientUsages, nil, nil)
	created, err := boot.CertificatesV1().CertificateSigningRequests().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		got, err := boot.CertificatesV1().CertificateSigningRequests().Get(ctx, created.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Status.Certificate) > 0 {
			return got.Status.Certificate, keyPEM
		}
		select {
		case <-ctx.Done():
			t.Fatal("no certificate issued")
		case <-time.After(5 * time.Millisecond):
		}
	}
}
