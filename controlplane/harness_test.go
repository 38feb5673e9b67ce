package controlplane_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// cluster is a control plane on loopback: a signer on a UNIX socket and
// the API server, both in-process but speaking their real protocols.
type cluster struct {
	t      *testing.T
	dir    string
	addr   string
	clk    *clock.Fake
	caPEM  []byte
	srv    *controlplane.Server
	stop   func() // stops the API server
	stopSg func() // stops the signer
	meta   string
	// metaData, when set before start, is the metadata data file the
	// trust bundle is published in.
	metaData string
	// tunnelAddr, when set before start, is where the tunnel server
	// listens.
	tunnelAddr string
	// konnAddr, when set before start, is where the Konnectivity gRPC
	// frontend listens (mutual TLS).
	konnAddr string
}

// newCluster starts a cluster; opts change it before it starts.
func newCluster(t *testing.T, opts ...func(*cluster)) *cluster {
	t.Helper()
	// UNIX socket paths are limited to about 100 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "ntcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := &cluster{t: t, dir: dir, addr: addr, clk: clock.NewFake(time.Now().Truncate(time.Second))}
	if err := controlplane.Init(controlplane.InitOptions{DataDir: dir, Server: "https://" + addr, Clock: c.clk}); err != nil {
		t.Fatal(err)
	}
	c.caPEM, _ = os.ReadFile(controlplane.Paths{DataDir: dir}.CACert())
	c.meta = filepath.Join(dir, "metadata.yaml")
	os.WriteFile(c.meta, []byte(`
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
	for _, o := range opts {
		o(c)
	}
	c.startSigner()
	c.start()
	return c
}

func (c *cluster) startSigner() {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- controlplane.RunSigner(ctx, controlplane.SignerConfig{DataDir: c.dir, Clock: c.clk}) }()
	sock := controlplane.Paths{DataDir: c.dir}.SignerSocket()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			c.t.Fatalf("signer: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	var once sync.Once
	c.stopSg = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				c.t.Errorf("signer: %v", err)
			}
		})
	}
	c.t.Cleanup(c.stopSg)
}

func (c *cluster) start() {
	c.t.Helper()
	srv, err := controlplane.NewServer(controlplane.Config{DataDir: c.dir, MetadataFile: c.meta, Clock: c.clk, Workers: 4,
		GCInterval:   10000 * time.Hour, // tests call Collect themselves
		MetadataData: c.metaData, TunnelListen: c.tunnelAddr, KonnectivityListen: c.konnAddr})
	if err != nil {
		c.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	c.srv = srv
	var once sync.Once
	c.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				c.t.Errorf("server: %v", err)
			}
		})
	}
	c.t.Cleanup(c.stop)
}

func (c *cluster) restConfig() *rest.Config {
	return &rest.Config{Host: "https://" + c.addr, TLSClientConfig: rest.TLSClientConfig{CAData: c.caPEM}, Timeout: 30 * time.Second}
}

func (c *cluster) admin() kubernetes.Interface {
	c.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", controlplane.Paths{DataDir: c.dir}.AdminKubeconfig())
	if err != nil {
		c.t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(cfg)
}

func (c *cluster) withToken(tok string) kubernetes.Interface {
	cfg := c.restConfig()
	cfg.BearerToken = tok
	return kubernetes.NewForConfigOrDie(cfg)
}

func (c *cluster) withCert(certPEM, keyPEM []byte) kubernetes.Interface {
	cfg := c.restConfig()
	cfg.CertData, cfg.KeyData = certPEM, keyPEM
	return kubernetes.NewForConfigOrDie(cfg)
}

func (c *cluster) token(ttl time.Duration) string {
	c.t.Helper()
	tok, _, err := c.srv.Tokens.Create(ttl, "test", nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return tok
}

// nodeCSR returns a kubelet client CSR object for cn with a fresh key.
func nodeCSR(t *testing.T, name, cn string, orgs []string, signer string, usages []certv1.KeyUsage, dns []string, ips []net.IP) (*certv1.CertificateSigningRequest, crypto.Signer, []byte) {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	req, err := pki.NewCSR(key, cn, orgs, dns, ips)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pki.EncodeKey(key)
	return &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       certv1.CertificateSigningRequestSpec{Request: req, SignerName: signer, Usages: usages},
	}, key, keyPEM
}

var clientUsages = []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	certs, err := pki.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}
