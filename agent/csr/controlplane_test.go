package csr

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// cluster is nodetrust's real control plane, in-process on loopback: the
// signer on a UNIX socket and the API server with its approver.
type cluster struct {
	t        *testing.T
	dir      string
	addr     string
	clk      *clock.Fake // the control plane's clock; the clients use real time
	pool     *x509.CertPool
	srv      *controlplane.Server
	stopSign func()
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "ntcsr") // short: UNIX socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, addr: ln.Addr().String(), clk: clock.NewFake(time.Now().Truncate(time.Second))}
	if err := controlplane.Init(controlplane.InitOptions{DataDir: dir, Server: "https://" + c.addr, Clock: c.clk}); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(controlplane.Paths{DataDir: dir}.CACert())
	if err != nil {
		t.Fatal(err)
	}
	c.pool = x509.NewCertPool()
	c.pool.AppendCertsFromPEM(caPEM)
	meta := filepath.Join(dir, "metadata.yaml")
	err = os.WriteFile(meta, []byte(`
project: {projectId: p, numericProjectId: 1}
instances:
- name: node-1
  id: 1
  zone: z
  hostname: node-1.example.internal
  hostAddresses: [10.0.0.11]
  networkInterfaces:
  - ip: 10.0.0.11
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	c.startSigner()
	srv, err := controlplane.NewServer(controlplane.Config{DataDir: dir, MetadataFile: meta, Clock: c.clk, Workers: 2, GCInterval: 10000 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane: %v", err)
		}
	})
	return c
}

func (c *cluster) startSigner() {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- controlplane.RunSigner(ctx, controlplane.SignerConfig{DataDir: c.dir, Clock: c.clk}) }()
	sock := controlplane.Paths{DataDir: c.dir}.SignerSocket()
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			c.t.Fatalf("signer: %v", err)
		case <-time.After(5 * time.Millisecond): // waiting for the signer goroutine
		}
	}
	var once sync.Once
	c.stopSign = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				c.t.Errorf("signer: %v", err)
			}
		})
	}
	c.t.Cleanup(c.stopSign)
}

// client returns a csr.Client of the cluster that authenticates with
// token, or with the certificate getCert returns.
func (c *cluster) client(token string, getCert func() (*tls.Certificate, error)) *Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool, MinVersion: tls.VersionTLS12}}
	if getCert != nil {
		tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return getCert() }
	}
	c.t.Cleanup(tr.CloseIdleConnections)
	return &Client{
		Server:      "https://" + c.addr,
		HTTPClient:  &http.Client{Transport: tr},
		Token:       token,
		Logger:      testLogger(c.t),
		WaitTimeout: 20 * time.Second,
	}
}

func (c *cluster) token() string {
	c.t.Helper()
	tok, _, err := c.srv.Tokens.Create(time.Hour, "csr test", nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return tok
}

// admin returns a client-go clientset with the admin's certificate, to
// inspect and decide requests as an operator would.
func (c *cluster) admin() kubernetes.Interface {
	c.t.Helper()
	p := controlplane.Paths{DataDir: c.dir}
	ca, _ := os.ReadFile(p.CACert())
	cert, _ := os.ReadFile(p.AdminCert())
	key, _ := os.ReadFile(p.AdminKey())
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "https://" + c.addr, TLSClientConfig: rest.TLSClientConfig{CAData: ca, CertData: cert, KeyData: key}})
	if err != nil {
		c.t.Fatal(err)
	}
	return cs
}

func (c *cluster) adminCert() *tls.Certificate {
	p := controlplane.Paths{DataDir: c.dir}
	pair, err := tls.LoadX509KeyPair(p.AdminCert(), p.AdminKey())
	if err != nil {
		c.t.Fatal(err)
	}
	return &pair
}

func (c *cluster) list(ctx context.Context) []certv1.CertificateSigningRequest {
	c.t.Helper()
	l, err := c.admin().CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return l.Items
}

// TestControlPlaneBootstrapRenewServe runs the agent's three requests
// against the real control plane: the first client certificate with a
// bootstrap token, its renewal authenticated by that certificate, and a
// serving certificate for names the node owns.
func TestControlPlaneBootstrapRenewServe(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	key1 := newKey(t)
	certPEM, err := c.client(c.token(), nil).Request(ctx, ClientRequest("node-1", key1))
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	if cert := parseLeaf(t, certPEM); cert.Subject.CommonName != "system:node:node-1" {
		t.Fatalf("bootstrap certificate for %v", cert.Subject)
	}
	pair := &tls.Certificate{Certificate: [][]byte{parseLeaf(t, certPEM).Raw}, PrivateKey: key1}
	node := c.client("", func() (*tls.Certificate, error) { return pair, nil })

	key2 := newKey(t)
	r := ClientRequest("node-1", key2)
	r.Duration = 2 * time.Hour
	renewed, err := node.Request(ctx, r)
	if err != nil {
		t.Fatalf("renewal: %v", err)
	}
	rc := parseLeaf(t, renewed)
	if got := rc.NotAfter.Sub(c.clk.Now()); got != 2*time.Hour {
		t.Errorf("renewed lifetime %v, want the requested 2h", got)
	}
	name2, _ := Name(key2.Public(), r.Subject, r.Usages)
	got, err := c.admin().CertificatesV1().CertificateSigningRequests().Get(ctx, name2, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Username != "system:node:node-1" {
		t.Errorf("renewal requested by %q, want the node's certificate identity", got.Spec.Username)
	}

	serving, err := node.Request(ctx, ServingRequest("node-1", newKey(t), []string{"node-1.example.internal"}, []net.IP{net.ParseIP("10.0.0.11")}))
	if err != nil {
		t.Fatalf("serving: %v", err)
	}
	if sc := parseLeaf(t, serving); len(sc.IPAddresses) != 1 || len(sc.DNSNames) != 1 {
		t.Errorf("serving certificate SANs %v %v", sc.DNSNames, sc.IPAddresses)
	}

	// A serving certificate for an address the node does not own is
	// refused: kube-apiserver would accept the request and leave it to an
	// approver to deny; nodetrust's API forbids it up front.
	_, err = node.Request(ctx, ServingRequest("node-1", newKey(t), nil, []net.IP{net.ParseIP("10.9.9.9")}))
	var ce *ConditionError
	switch {
	case errors.As(err, &ce) && errors.Is(err, ErrDenied) && ce.Reason != "":
	case errors.Is(err, ErrForbidden):
		t.Logf("unowned IP refused at create: %v", err)
	default:
		t.Fatalf("serving certificate for an unowned IP: %v, want ErrDenied with a reason or ErrForbidden", err)
	}
}

// TestControlPlaneDenied: a request an operator denies while the agent
// waits ends the wait with ErrDenied and the operator's reason.
func TestControlPlaneDenied(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	// Serving requests not made by the node itself stay pending for a
	// person to decide.
	admin := c.adminCert()
	cl := c.client("", func() (*tls.Certificate, error) { return admin, nil })
	ch := start(t, cl, ServingRequest("node-1", newKey(t), []string{"node-1.example.internal"}, nil))
	var pending certv1.CertificateSigningRequest
	for pending.Name == "" {
		if items := c.list(ctx); len(items) == 1 {
			pending = items[0]
		} else {
			time.Sleep(5 * time.Millisecond) // waiting for the client goroutine
		}
	}
	pending.Status.Conditions = append(pending.Status.Conditions, certv1.CertificateSigningRequestCondition{
		Type: certv1.CertificateDenied, Status: "True", Reason: "OperatorDenied", Message: "not this one",
	})
	if _, err := c.admin().CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, pending.Name, &pending, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := await(t, ch)
	var ce *ConditionError
	if !errors.As(r.err, &ce) || !errors.Is(r.err, ErrDenied) || ce.Reason != "OperatorDenied" || ce.Message != "not this one" {
		t.Fatalf("err %v, want ErrDenied with the operator's reason", r.err)
	}
}

// TestControlPlaneReattach: an agent restarted with its persisted key
// finds the request it made before and posts no second one.
func TestControlPlaneReattach(t *testing.T) {
	c := newCluster(t)
	ctx := t.Context()
	tok := c.token()
	c.stopSign() // approved but not signed until the signer is back
	key := newKey(t)

	wctx, cancel := context.WithCancel(ctx)
	ch := make(chan result, 1)
	go func() {
		cert, err := c.client(tok, nil).Request(wctx, ClientRequest("node-1", key))
		ch <- result{cert, err}
	}()
	var first certv1.CertificateSigningRequest
	for first.Name == "" {
		if items := c.list(ctx); len(items) == 1 && condition(&items[0], certv1.CertificateApproved) != nil {
			first = items[0]
		} else {
			time.Sleep(5 * time.Millisecond) // waiting for the approver goroutine
		}
	}
	cancel() // the agent stops mid-wait
	if r := await(t, ch); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("first wait: %v, want context.Canceled", r.err)
	}

	c.startSigner()
	ch2 := start(t, c.client(tok, nil), ClientRequest("node-1", key))
	// The approver retries signing on its clock.
	var r result
	for done := false; !done; {
		select {
		case r = <-ch2:
			done = true
		case <-time.After(20 * time.Millisecond):
			c.clk.Advance(2 * time.Second)
		}
	}
	if r.err != nil {
		t.Fatalf("after restart: %v", r.err)
	}
	checkNoGoroutines(t)
	items := c.list(ctx)
	if len(items) != 1 || items[0].Name != first.Name || items[0].UID != first.UID {
		t.Fatalf("%d requests after the restart, want only %s", len(items), first.Name)
	}
	if !key.PublicKey.Equal(parseLeaf(t, r.cert).PublicKey) {
		t.Error("certificate is not for the persisted key")
	}
}

func TestControlPlaneUnknownToken(t *testing.T) {
	c := newCluster(t)
	_, err := c.client("abcdef.0123456789abcdef", nil).Request(t.Context(), ClientRequest("node-1", newKey(t)))
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err %v, want ErrUnauthorized", err)
	}
}
