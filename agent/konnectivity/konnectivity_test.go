package konnectivity

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	agentproto "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"sigs.k8s.io/apiserver-network-proxy/pkg/server"
	"sigs.k8s.io/apiserver-network-proxy/pkg/server/proxystrategies"
)

type testPKI struct {
	ca   *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{ca: ca, key: key, pool: pool}
}

func (p *testPKI) issue(t *testing.T, cn string, org []string, serverAuth bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn, Organization: org},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if serverAuth {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// stockServer is an unmodified konnectivity-server (pkg/server) with its
// agent port on mutual TLS and its HTTP CONNECT frontend on plain TCP.
type stockServer struct {
	ps        *server.ProxyServer
	agentAddr string
	frontAddr string
	peers     atomic.Int64 // agent handshakes verified
	lastPeer  atomic.Value // *big.Int: serial of the last agent certificate
	stop      func()
}

func startStockServer(t *testing.T, p *testPKI) *stockServer {
	return startStockServerOpts(t, p, "server-1", 1, "127.0.0.1:0")
}

// startStockServerOpts starts a stock server called id, told that there
// are count replicas, with its agent port on agentAddr.
func startStockServerOpts(t *testing.T, p *testPKI, id string, count int, agentAddr string) *stockServer {
	t.Helper()
	ps := server.NewProxyServer(id, []proxystrategies.ProxyStrategy{proxystrategies.ProxyStrategyDefault},
		count, &server.AgentTokenAuthenticationOptions{}, 10)
	cert := p.issue(t, "konnectivity-server", nil, true)
	ss := &stockServer{ps: ps}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.pool,
		MinVersion:   tls.VersionTLS13,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) > 0 {
				ss.lastPeer.Store(cs.PeerCertificates[0].SerialNumber)
				ss.peers.Add(1)
			}
			return nil
		},
	})))
	agentproto.RegisterAgentServiceServer(gs, ps)
	var al net.Listener
	var err error
	for range 50 { // a restarted server rebinds the old port
		if al, err = net.Listen("tcp", agentAddr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(al)

	hs := &http.Server{Handler: &server.Tunnel{Server: ps}}
	fl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(fl)
	ss.stop = func() { gs.Stop(); hs.Close() }
	t.Cleanup(ss.stop)
	ss.agentAddr, ss.frontAddr = al.Addr().String(), fl.Addr().String()
	return ss
}

// fakeKubelet serves /hello and /big (1 MiB) on loopback.
func fakeKubelet(t *testing.T) (*httptest.Server, []byte) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Write(big)
		case "/huge": // 16 MiB, slowly, so that it is still running when the test acts
			for range 16 {
				w.Write(big)
				w.(http.Flusher).Flush()
				time.Sleep(40 * time.Millisecond)
			}
		default:
			io.WriteString(w, "hello from kubelet")
		}
	}))
	t.Cleanup(ts.Close)
	return ts, big
}

// connect sends an HTTP CONNECT for target to the stock frontend.
func connect(t *testing.T, front, target string) (net.Conn, *bufio.Reader, int) {
	t.Helper()
	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return c, br, 0 // closed without an answer counts as refused
	}
	return c, br, resp.StatusCode
}

func get(t *testing.T, c net.Conn, br *bufio.Reader, path string) []byte {
	t.Helper()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: kubelet\r\n\r\n", path)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s through the tunnel: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d, err %v", path, resp.StatusCode, err)
	}
	return b
}

// ours counts goroutines running this package's code (methods only:
// every goroutine the package starts runs one).
func ours() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "agent/konnectivity.(*") {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStockServerHTTPConnect(t *testing.T) {
	p := newPKI(t)
	srv := startStockServer(t, p)
	kubelet, big := fakeKubelet(t)
	other := httptest.NewServer(http.NotFoundHandler()) // not allowlisted
	defer other.Close()
	ku, _ := url.Parse(kubelet.URL)
	ou, _ := url.Parse(other.URL)

	agentCert := p.issue(t, "system:node:node1", []string{"system:nodes"}, false)
	c, err := New(Config{
		Server:            srv.agentAddr,
		NodeName:          "node1",
		ClientCertificate: func() (*tls.Certificate, error) { return &agentCert, nil },
		Roots:             func() (*x509.CertPool, error) { return p.pool, nil },
		Allow:             []string{ku.Host},
		DialTimeout:       2 * time.Second,
		StopTimeout:       time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(ctx) }()
	defer func() {
		cancel()
		<-runDone
	}()
	waitFor(t, "agent registered with the server", func() bool {
		ok, _ := srv.ps.Readiness.Ready()
		return ok && c.Connected() == 1
	})
	idle := ours()

	t.Run("request", func(t *testing.T) {
		conn, br, status := connect(t, srv.frontAddr, ku.Host)
		defer conn.Close()
		if status != 200 {
			t.Fatalf("CONNECT %s: status %d, want 200", ku.Host, status)
		}
		if got := string(get(t, conn, br, "/hello")); got != "hello from kubelet" {
			t.Fatalf("body %q", got)
		}
		if got := get(t, conn, br, "/big"); !bytes.Equal(got, big) {
			t.Fatalf("big body: %d bytes, differs from the %d sent", len(got), len(big))
		}
	})

	t.Run("disallowed", func(t *testing.T) {
		conn, _, status := connect(t, srv.frontAddr, ou.Host)
		defer conn.Close()
		if status == 200 {
			t.Fatalf("CONNECT %s (not allowlisted): status 200", ou.Host)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		const n = 8
		errs := make(chan error, n)
		for range n {
			go func() {
				conn, br, status := connect(t, srv.frontAddr, ku.Host)
				defer conn.Close()
				if status != 200 {
					errs <- fmt.Errorf("CONNECT: status %d", status)
					return
				}
				fmt.Fprintf(conn, "GET /big HTTP/1.1\r\nHost: kubelet\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && !bytes.Equal(b, big) {
					err = fmt.Errorf("body of %d bytes differs", len(b))
				}
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("no leak per connection", func(t *testing.T) {
		waitFor(t, "proxied connections to end", func() bool {
			c := ours()
			return c == idle
		})
	})

	cancel()
	select {
	case err := <-runDone:
		runDone <- err
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if n := ours(); n != 0 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines of this package left after Run returned:\n%s", n, buf[:runtime.Stack(buf, true)])
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	ok := Config{
		Server: "127.0.0.1:8091", NodeName: "node1",
		ClientCertificate: func() (*tls.Certificate, error) { return nil, nil },
		Roots:             func() (*x509.CertPool, error) { return nil, nil },
	}
	c, err := New(ok)
	if err != nil {
		t.Fatalf("New(valid): %v", err)
	}
	if c.cfg.ReadSize < MinReadSize || c.cfg.AgentID != "node1" {
		t.Fatalf("defaults: ReadSize %d, AgentID %q", c.cfg.ReadSize, c.cfg.AgentID)
	}
	small := ok
	small.ReadSize = 4 << 10
	if c, _ := New(small); c.cfg.ReadSize != MinReadSize {
		t.Fatalf("ReadSize 4 KiB became %d, want the %d floor", c.cfg.ReadSize, MinReadSize)
	}
	if got := c.identifiers(); got != "host=node1" {
		t.Fatalf("agentidentifiers %q", got)
	}
	bad := ok
	bad.Allow = []string{"127.0.0.1:*"}
	if _, err := New(bad); err == nil {
		t.Fatal("New accepted a bad allowlist entry")
	}
	bad = ok
	bad.Server = "nohostport"
	if _, err := New(bad); err == nil {
		t.Fatal("New accepted a bad server address")
	}
}
