package tunnel_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	nodeagent "github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/tunnel"
	"github.com/nodetrust/nodetrust/test/harness"
)

// TestAgentEndToEnd runs the real agent against the in-process control
// plane: it bootstraps a node certificate from the cluster CA, then its
// Run keeps a tunnel that the CONNECT frontend uses.
func TestAgentEndToEnd(t *testing.T) {
	checkLeaks(t)
	env := harness.Start(t, harness.Options{})
	p := controlplane.Paths{DataDir: env.Dir}
	pair, err := tls.LoadX509KeyPair(p.APIServerCert(), p.APIServerKey())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(env.CAPEM)
	srv, err := tunnel.New(tunnel.Config{Certificate: &pair, ClientCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(env.Dir, "c.sock")
	uln, err := tunnel.ListenSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Run(ctx, tunnel.Listeners{TLS: ln, Unix: uln}) }()

	port := kubelet(t)
	state, err := os.MkdirTemp("", "nta")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	cfg, err := nodeagent.ParseConfig([]byte("server: " + env.APIURL + "\nstateDir: " + state +
		"\ntunnel:\n  servers: [\"" + ln.Addr().String() + "\"]\n  allow: [\"127.0.0.1:" + port + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := nodeagent.New(cfg, nodeagent.Options{Clock: env.Clock, Metadata: env.MetadataClient(0),
		Addresses: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	octx, ocancel := context.WithTimeout(ctx, 20*time.Second)
	defer ocancel()
	if err := a.Once(octx); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-agentDone
		<-srvDone
	})
	node := env.Nodes[0]
	for deadline := time.Now().Add(5 * time.Second); srv.Conns(node) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node %s has no tunnel", node)
		}
	}
	hello(t, frontend{network: "unix", addr: sock}, port)
}
