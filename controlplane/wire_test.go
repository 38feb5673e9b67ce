package controlplane_test

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
)

// contentTypes records the Content-Type of every answer.
type contentTypes struct {
	rt   http.RoundTripper
	mu   sync.Mutex
	seen map[string]bool // guarded by mu
}

func (c *contentTypes) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(r)
	if err == nil {
		c.mu.Lock()
		c.seen[r.Method+" "+resp.Header.Get("Content-Type")] = true
		c.mu.Unlock()
	}
	return resp, err
}

// TestCreateAndWatchInBothEncodings creates a request and watches it
// until issued with client-go as it comes (which asks for protobuf) and
// with a client that accepts only JSON, and checks what each was answered
// in and what it got.
func TestCreateAndWatchInBothEncodings(t *testing.T) {
	c := newCluster(t)
	tok := c.token(time.Hour)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.caPEM)
	for i, tt := range []struct {
		name       string
		accept     string
		wantCreate string
		wantWatch  string
	}{
		{"client-go default", "", "POST application/vnd.kubernetes.protobuf", "GET application/vnd.kubernetes.protobuf;stream=watch"},
		{"JSON only", "application/json", "POST application/json", "GET application/json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			cfg := c.restConfig()
			cfg.BearerToken = tok
			cfg.AcceptContentTypes = tt.accept
			if tt.accept != "" {
				cfg.ContentType = tt.accept
			}
			rec := &contentTypes{seen: map[string]bool{}}
			cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { rec.rt = rt; return rec }
			api := kubernetes.NewForConfigOrDie(cfg).CertificatesV1().CertificateSigningRequests()
			node := fmt.Sprintf("system:node:wire-%d", i)
			obj, key, _ := nodeCSR(t, fmt.Sprintf("wire-%d", i), node, []string{"system:nodes"}, csrpolicy.SignerKubeletClient, clientUsages, nil, nil)
			created, err := api.Create(ctx, obj, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if created.Name != obj.Name || created.ResourceVersion == "" || created.UID == "" ||
				created.Spec.Username != "system:bootstrap:"+tok[:6] || string(created.Spec.Request) != string(obj.Spec.Request) {
				t.Fatalf("created %+v", created)
			}
			w, err := api.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", obj.Name).String(), ResourceVersion: created.ResourceVersion})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			var issued *certv1.CertificateSigningRequest
			for ev := range w.ResultChan() {
				got, ok := ev.Object.(*certv1.CertificateSigningRequest)
				if ev.Type != watch.Modified || !ok {
					t.Fatalf("event %s %T", ev.Type, ev.Object)
				}
				if csrpolicy.StateOf(got.Status) == csrpolicy.Issued {
					issued = got
					break
				}
			}
			if issued == nil {
				t.Fatal("watch ended before the certificate was issued")
			}
			cert := parseCert(t, issued.Status.Certificate)
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: c.clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("issued certificate does not verify: %v", err)
			}
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) || cert.Subject.CommonName != node {
				t.Errorf("certificate is for %q with another key", cert.Subject.CommonName)
			}
			for _, want := range []string{tt.wantCreate, tt.wantWatch} {
				if !rec.seen[want] {
					t.Errorf("no answer %q; answers were %v", want, rec.seen)
				}
			}
		})
	}
}
