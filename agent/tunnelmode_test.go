package agent_test

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
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	agentproto "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"sigs.k8s.io/apiserver-network-proxy/pkg/server"
	"sigs.k8s.io/apiserver-network-proxy/pkg/server/proxystrategies"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/test/harness"
)

func TestTunnelModeConfig(t *testing.T) {
	const base = "server: https://10.0.0.2:6443\n"
	c, err := agent.ParseConfig([]byte(base + "tunnel: {servers: [cp:8132], allow: [self:10250]}\n"))
	require.NoError(t, err)
	assert.Equal(t, agent.TunnelNative, c.Tunnel.Mode)
	assert.Equal(t, []string{"cp:8132"}, c.Tunnel.Servers)

	c, err = agent.ParseConfig([]byte(base + "tunnel: {mode: konnectivity, servers: [cp:8091, cp2:8091], agentID: a1, allow: [self:10250]}\n"))
	require.NoError(t, err)
	assert.Equal(t, agent.TunnelKonnectivity, c.Tunnel.Mode)
	assert.Equal(t, []string{"cp:8091", "cp2:8091"}, c.Tunnel.Servers)
	assert.Equal(t, "a1", c.Tunnel.AgentID)

	// One stream per server; their metrics are told apart by a server label.
	c.StateDir = t.TempDir()
	_, err = agent.New(c, agent.Options{Registerer: prometheus.NewRegistry()})
	require.NoError(t, err)

	for in, key := range map[string]string{
		"tunnel: {mode: grpc, servers: [cp:8091]}":                  "tunnel.mode",
		"tunnel: {mode: konnectivity}":                              "tunnel.servers",
		"tunnel: {mode: konnectivity, servers: [cp]}":               "tunnel.servers",
		"tunnel: {mode: konnectivity, servers: [cp:1], allow: [x]}": "tunnel.allow",
		"tunnel: {servers: [cp:8132], agentID: a1}":                 "tunnel.agentID",
	} {
		_, err := agent.ParseConfig([]byte(base + in + "\n"))
		require.ErrorIs(t, err, agent.ErrConfig, in)
		assert.Contains(t, err.Error(), key+":", in)
	}
}

// startStockKonnectivity runs an unmodified konnectivity-server (pkg/server)
// with its agent port on mutual TLS under the cluster CA and its HTTP
// CONNECT frontend on plain TCP; it returns both addresses and the server.
func startStockKonnectivity(t *testing.T, env *harness.Env) (*server.ProxyServer, string, string) {
	t.Helper()
	paths := controlplane.Paths{DataDir: env.Dir}
	caKey, err := pki.ReadKeyFile(paths.CAKey())
	require.NoError(t, err)
	cas, err := pki.ParseCerts(env.CAPEM)
	require.NoError(t, err)
	key, err := pki.GenerateKey()
	require.NoError(t, err)
	leaf, err := pki.Issue(pki.LeafSpec{CommonName: "konnectivity-server", KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, key.Public(), cas[0], caKey)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(env.CAPEM)

	ps := server.NewProxyServer("server-1", []proxystrategies.ProxyStrategy{proxystrategies.ProxyStrategyDefault},
		1, &server.AgentTokenAuthenticationOptions{}, 10)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}},
		ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS13,
	})))
	agentproto.RegisterAgentServiceServer(gs, ps)
	al, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go gs.Serve(al)
	t.Cleanup(gs.Stop)
	hs := &http.Server{Handler: &server.Tunnel{Server: ps}}
	fl, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go hs.Serve(fl)
	t.Cleanup(func() { hs.Close() })
	return ps, al.Addr().String(), fl.Addr().String()
}

func TestKonnectivityModeThroughStockServer(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	ps, agentAddr, front := startStockKonnectivity(t, env)
	kubelet := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello from kubelet")
	}))
	defer kubelet.Close()
	ku, _ := url.Parse(kubelet.URL)

	state := t.TempDir()
	cfg, err := agent.ParseConfig(fmt.Appendf(nil, "server: %s\nstateDir: %s\ntunnel: {mode: konnectivity, servers: [%q], allow: [%q]}\n",
		env.APIURL, state, agentAddr, ku.Host))
	require.NoError(t, err)
	a, err := agent.New(cfg, agent.Options{Clock: env.Clock, Metadata: env.MetadataClient(0)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	require.Eventually(t, func() bool { ok, _ := ps.Readiness.Ready(); return ok }, 20*time.Second, 10*time.Millisecond,
		"agent registered with the stock server")
	_, err = a.ClientCertificate()
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(state, "ca.crt"))

	c, err := net.Dial("tcp", front)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", ku.Host, ku.Host)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode)
	fmt.Fprintf(c, "GET /hello HTTP/1.1\r\nHost: kubelet\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "hello from kubelet", string(body))
}
