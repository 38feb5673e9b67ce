package tunnel_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	agenttunnel "github.com/nodetrust/nodetrust/agent/tunnel"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/tunnel"
)

// testCA is a throwaway cluster CA.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.NewCA("test cluster CA", key, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf issues a client (or, with server set, a serving) certificate.
func (ca *testCA) leaf(t *testing.T, cn string, orgs []string, server bool) *tls.Certificate {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	spec := pki.LeafSpec{CommonName: cn, Organizations: orgs, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	if server {
		spec.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		spec.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
		spec.DNSNames = []string{"localhost"}
	}
	cert, err := pki.Issue(spec, key.Public(), ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

func (ca *testCA) node(t *testing.T, name string) *tls.Certificate {
	return ca.leaf(t, "system:node:"+name, []string{"system:nodes"}, false)
}

// cpServer is a running tunnel server.
type cpServer struct {
	srv    *tunnel.Server
	addr   string
	socket string
	reg    *prometheus.Registry
	stop   func()
}

// startServer runs a tunnel server on addr ("" for any port) and a UNIX
// socket frontend; it stops at the end of the test or on stop().
func startServer(t *testing.T, ca *testCA, addr string, opts ...func(*tunnel.Config)) *cpServer {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	reg := prometheus.NewRegistry()
	cfg := tunnel.Config{Certificate: ca.leaf(t, "tunnel-server", nil, true), ClientCAs: ca.pool,
		Registerer: reg, DialTimeout: 5 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := tunnel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		if i > 200 {
			t.Fatalf("listen %s: %v", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	dir, err := os.MkdirTemp("", "ntt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "connect.sock")
	uln, err := tunnel.ListenSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, tunnel.Listeners{TLS: ln, Unix: uln}) }()
	var stopped atomic.Bool
	stop := func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("server Run did not return")
		}
	}
	t.Cleanup(stop)
	return &cpServer{srv: srv, addr: ln.Addr().String(), socket: sock, reg: reg, stop: stop}
}

// waitNode waits until the server has a tunnel from node.
func (s *cpServer) waitNode(t *testing.T, node string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for s.srv.Conns(node) == 0 {
		if time.Since(start) > within {
			t.Fatalf("node %s not connected to %s within %v", node, s.addr, within)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

// agent is a running tunnel client.
type agent struct {
	c    *agenttunnel.Client
	reg  *prometheus.Registry
	cert atomic.Pointer[tls.Certificate]
	stop func()
}

func startAgent(t *testing.T, ca *testCA, cert *tls.Certificate, allow []string, servers ...string) *agent {
	t.Helper()
	a := &agent{reg: prometheus.NewRegistry()}
	a.cert.Store(cert)
	c, err := agenttunnel.New(agenttunnel.Config{
		Servers: servers, NodeName: "node-1", Allow: allow,
		ClientCertificate: func() (*tls.Certificate, error) { return a.cert.Load(), nil },
		Roots:             func() (*x509.CertPool, error) { return ca.pool, nil },
		CertCheckInterval: 20 * time.Millisecond, DrainTimeout: time.Minute, Registerer: a.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	a.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var stopped atomic.Bool
	a.stop = func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("agent Run did not return")
		}
	}
	t.Cleanup(a.stop)
	return a
}

// kubelet is a fake kubelet on loopback: /hello answers a line, /bytes?n=N
// streams N deterministic bytes (see pattern).
func kubelet(t *testing.T) (port string) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hello":
			fmt.Fprintf(w, "hello from kubelet\n")
		case "/bytes":
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
			io.Copy(w, io.LimitReader(pattern(), n))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	_, port, _ = net.SplitHostPort(srv.Listener.Addr().String())
	return port
}

// pattern is the deterministic byte stream /bytes serves.
func pattern() io.Reader {
	return rand.NewChaCha8([32]byte{1, 2, 3})
}

// frontend is how a test reaches the CONNECT frontend.
type frontend struct {
	network, addr string
	tls           *tls.Config // nil for the UNIX socket
}

func viaSocket(s *cpServer) frontend { return frontend{network: "unix", addr: s.socket} }

func viaTLS(s *cpServer, ca *testCA, cert *tls.Certificate) frontend {
	return frontend{network: "tcp", addr: s.addr, tls: &tls.Config{RootCAs: ca.pool, ServerName: "localhost",
		Certificates: []tls.Certificate{*cert}, NextProtos: []string{"http/1.1"}}}
}

// tunnelConn is an established CONNECT tunnel.
type tunnelConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *tunnelConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// connect sends CONNECT target and returns the tunnel, or the refusal.
func (f frontend) connect(target string) (*tunnelConn, *http.Response, error) {
	c, err := net.DialTimeout(f.network, f.addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	if f.tls != nil {
		c = tls.Client(c, f.tls)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body = io.NopCloser(strings.NewReader(string(b)))
		c.Close()
		return nil, resp, nil
	}
	return &tunnelConn{Conn: c, r: br}, resp, nil
}

// get sends a GET over an established tunnel and returns the response.
func (c *tunnelConn) get(path string) (*http.Response, error) {
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: node-1\r\nConnection: close\r\n\r\n", path); err != nil {
		return nil, err
	}
	return http.ReadResponse(c.r, nil)
}

// checkLeaks fails the test if tunnel or HTTP/2 goroutines outlive it.
// Register it first so that it runs after the other cleanups.
func checkLeaks(t *testing.T) {
	t.Cleanup(func() {
		var stacks string
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			buf := make([]byte, 1<<20)
			all := string(buf[:runtime.Stack(buf, true)])
			stacks = ""
			for _, g := range strings.Split(all, "\n\n") {
				if strings.Contains(g, "nodetrust/agent/tunnel") || strings.Contains(g, "nodetrust/controlplane/tunnel.") ||
					strings.Contains(g, "x/net/http2") {
					if !strings.Contains(g, "checkLeaks") {
						stacks += g + "\n\n"
					}
				}
			}
			if stacks == "" {
				return
			}
		}
		t.Errorf("goroutines leaked:\n%s", stacks)
	})
}

// metric returns the value of the metric name whose (only) label has the
// given value ("" for an unlabelled metric); 0 when absent.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}
