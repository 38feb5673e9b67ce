package controlplane_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	konnclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	agenttunnel "github.com/nodetrust/nodetrust/agent/tunnel"
	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/signer"
)

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestKonnectivityByNodeIP runs the control plane with tunnels, the
// Konnectivity socket and /metrics; a real agent tunnel connects, and the
// konnectivity-client library dials the node's registered IP, as
// kube-apiserver dials InternalIP:10250.
func TestKonnectivityByNodeIP(t *testing.T) {
	dir, err := os.MkdirTemp("", "ntk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	apiAddr, tunnelAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	if err := controlplane.Init(controlplane.InitOptions{DataDir: dir, Server: "https://" + apiAddr}); err != nil {
		t.Fatal(err)
	}
	const nodeIP = "127.10.0.1" // node-1's address in the instance registry
	meta := filepath.Join(dir, "metadata.yaml")
	os.WriteFile(meta, []byte("project: {projectId: p, numericProjectId: 1}\ninstances:\n- name: node-1\n  hostAddresses: ["+nodeIP+"]\n"), 0o600)
	socket := filepath.Join(dir, "k.sock")
	srv, err := controlplane.NewServer(controlplane.Config{DataDir: dir, MetadataFile: meta, GCInterval: time.Hour,
		TunnelListen: tunnelAddr, KonnectivitySocket: socket, MetricsListen: metricsAddr})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", apiAddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})

	// The kubelet listens on the node's IP only.
	kln, err := net.Listen("tcp", nodeIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	kubelet := &httptest.Server{Listener: kln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from kubelet\n")
	})}}
	kubelet.Start()
	t.Cleanup(kubelet.Close)
	target := kln.Addr().String()

	// A node-1 agent tunnel.
	p := controlplane.Paths{DataDir: dir}
	caCert, caKey, err := signer.LoadCA(p.CACert(), p.CAKey())
	if err != nil {
		t.Fatal(err)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := pki.Issue(pki.LeafSpec{CommonName: "system:node:node-1", Organizations: []string{"system:nodes"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}, key.Public(), caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	agent, err := agenttunnel.New(agenttunnel.Config{Servers: []string{tunnelAddr}, NodeName: "node-1", Allow: []string{target},
		ClientCertificate: func() (*tls.Certificate, error) { return cert, nil },
		Roots:             func() (*x509.CertPool, error) { return pool, nil }})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	adone := make(chan error, 1)
	go func() { adone <- agent.Run(actx) }()
	t.Cleanup(func() {
		acancel()
		<-adone
	})
	for deadline := time.Now().Add(5 * time.Second); srv.Tunnel.Conns("node-1") == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("node-1 has no tunnel")
		}
	}

	dial := func(address string) (string, error) {
		tun, err := konnclient.CreateSingleUseGrpcTunnelWithContext(context.Background(), context.Background(), "passthrough:///k",
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			}))
		if err != nil {
			return "", err
		}
		defer func() { <-tun.Done() }()
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		c, err := tun.DialContext(dctx, "tcp", address)
		if err != nil {
			return "", err
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", address)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return "", err
		}
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if got, err := dial(target); err != nil || got != "hello from kubelet\n" {
		t.Fatalf("GET through Konnectivity to %s = %q, %v", target, got, err)
	}
	if got, err := dial("127.10.0.2:10250"); err == nil || !strings.Contains(err.Error(), "no node owns the IP") {
		t.Fatalf("dial to an unknown IP = %q, %v; want an error", got, err)
	}

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"nodetrust_tunnel_agents_connected 1\n",
		`nodetrust_tunnel_dial_failures_total{reason="no_tunnel"} 1` + "\n",
		`nodetrust_tunnel_bytes_total{direction="from_agent"} `,
		"go_goroutines ",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics has no %q:\n%s", want, grepLines(string(b), "nodetrust_"))
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
