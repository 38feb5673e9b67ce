package agent_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

const rotToken = "abcdef.0123456789abcdef"

// rotNode is an agent (real clock, short trust interval) against a rotAPI,
// with an in-process metadata server carrying the bootstrap token, the
// first CA in kube-env, and optionally the project's nodetrust-ca-bundle.
type rotNode struct {
	t     *testing.T
	api   *rotAPI
	md    *metadata.Server
	state string
	a     *agent.Agent
	stop  func()
}

func newRotNode(t *testing.T, api *rotAPI, first *testCA) *rotNode {
	t.Helper()
	n := &rotNode{t: t, api: api, state: t.TempDir()}
	srv, err := metadata.NewServer(metadata.Config{}, n.mdData(first, nil))
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	n.md = srv
	cfg, err := agent.ParseConfig(fmt.Appendf(nil, "server: %s\nnodeName: n1\nstateDir: %s\ncheckInterval: 1m\nclientCertDuration: 1h\ntrust: {checkInterval: 100ms}\n",
		api.URL(), n.state))
	require.NoError(t, err)
	var log *slog.Logger
	if os.Getenv("AGENT_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	n.a, err = agent.New(cfg, agent.Options{Logger: log, Rand: func() float64 { return 0.5 },
		Metadata: mdclient.New(mdclient.Config{Host: ln.Addr().String(), RetryMax: -1})})
	require.NoError(t, err)
	return n
}

// mdData is the node's metadata: token and kubeEnvCA in kube-env's CA_CERT,
// and bundle (when set) in the project attribute nodetrust-ca-bundle.
func (n *rotNode) mdData(kubeEnvCA *testCA, bundle []*testCA) *metadata.Data {
	d := &metadata.Data{Project: metadata.Project{ProjectID: "p", NumericProjectID: 1, Attributes: map[string]string{}},
		Instances: []metadata.Instance{{Name: "n1", HostAddresses: []string{"127.0.0.1"}, Attributes: map[string]string{
			"nodetrust-bootstrap-token": rotToken,
			"kube-env":                  "CA_CERT: " + base64.StdEncoding.EncodeToString(kubeEnvCA.pem) + "\n",
		}}}}
	var b []byte
	for _, c := range bundle {
		b = append(b, c.pem...)
	}
	if b != nil {
		d.Project.Attributes["nodetrust-ca-bundle"] = string(b)
	}
	return d
}

func (n *rotNode) start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.a.Run(ctx) }()
	n.stop = func() {
		cancel()
		require.NoError(n.t, <-done)
	}
	n.t.Cleanup(cancel)
}

// clientCert is the client certificate on disk.
func (n *rotNode) clientCert() *x509.Certificate {
	b, err := os.ReadFile(filepath.Join(n.state, "pki", "kubelet-client-current.pem"))
	if err != nil {
		return nil
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil
	}
	return c
}

// roots is the pins of <stateDir>/ca.crt, in order.
func (n *rotNode) roots() []string {
	b, _ := os.ReadFile(filepath.Join(n.state, "ca.crt"))
	var pins []string
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return pins
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		require.NoError(n.t, err)
		pins = append(pins, bootstrap.SPKIPin(c))
	}
}

// waitOn waits until the client certificate was issued by ca and ca.crt
// holds exactly roots.
func (n *rotNode) waitOn(ca *testCA, roots ...*testCA) {
	n.t.Helper()
	var want []string
	for _, r := range roots {
		want = append(want, bootstrap.SPKIPin(r.cert))
	}
	require.EventuallyWithT(n.t, func(c *assert.CollectT) {
		cert := n.clientCert()
		if assert.NotNil(c, cert, "client certificate") {
			assert.NoError(c, cert.CheckSignatureFrom(ca.cert), "client certificate issuer")
		}
		assert.Equal(c, want, n.roots(), "ca.crt")
	}, 20*time.Second, 20*time.Millisecond)
}

func TestRotationFollowsTheBundle(t *testing.T) {
	oldCA, newCA := newTestCA(t, "cluster-ca"), newTestCA(t, "cluster-ca")
	api := newRotAPI(t, oldCA, rotToken)
	n := newRotNode(t, api, oldCA)
	n.start()
	n.waitOn(oldCA, oldCA)
	first := n.clientCert()

	// start: the new CA signs, both are trusted, servers still on the old one.
	api.set("update-clients", oldCA, newCA, oldCA)
	n.waitOn(newCA, newCA, oldCA)
	require.NotEqual(t, first.PublicKey, n.clientCert().PublicKey, "a new key for the re-issued certificate")
	require.Equal(t, bootstrap.SPKIPin(newCA.cert), n.a.TrustBundle().ActivePin)
	st := n.a.Status()
	require.NotNil(t, st.Trust)
	require.True(t, st.Trust.Published)
	require.Equal(t, "update-clients", st.Trust.Phase)
	require.Equal(t, bootstrap.SPKIPin(newCA.cert), st.Trust.ActiveCA)
	require.Len(t, st.Trust.Roots, 2)
	var words strings.Builder
	st.Describe(&words, time.Now())
	require.Contains(t, words.String(), "trust bundle: generation 2, rotation phase update-clients")
	require.Contains(t, words.String(), "signing CA    "+bootstrap.SPKIPin(newCA.cert))

	// update-servers: the API presents a certificate of the new CA.
	api.set("update-servers", newCA, newCA, oldCA)
	polls := api.pollCount()
	require.Eventually(t, func() bool { return api.pollCount() > polls+2 }, 10*time.Second, 10*time.Millisecond)
	onNew := n.clientCert()

	// complete: the old CA is dropped.
	api.set("idle", newCA, newCA)
	n.waitOn(newCA, newCA)
	require.Equal(t, onNew.SerialNumber, n.clientCert().SerialNumber, "no re-issue after complete")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		kc, err := os.ReadFile(filepath.Join(n.state, "kubelet.kubeconfig"))
		assert.NoError(c, err)
		assert.Contains(c, string(kc), base64.StdEncoding.EncodeToString(newCA.pem), "the kubeconfig trusts the new CA")
		assert.NotContains(c, string(kc), base64.StdEncoding.EncodeToString(oldCA.pem))
	}, 10*time.Second, 10*time.Millisecond)
	n.stop()
}

func TestRotationRollback(t *testing.T) {
	oldCA, newCA := newTestCA(t, "cluster-ca"), newTestCA(t, "cluster-ca")
	api := newRotAPI(t, oldCA, rotToken)
	n := newRotNode(t, api, oldCA)
	n.start()
	n.waitOn(oldCA, oldCA)
	api.set("update-clients", oldCA, newCA, oldCA)
	n.waitOn(newCA, newCA, oldCA)
	api.set("update-servers", newCA, newCA, oldCA)
	// rollback: the old CA signs again, servers back on it, both trusted.
	api.set("rollback", oldCA, oldCA, newCA)
	n.waitOn(oldCA, oldCA, newCA)
	// complete in rollback drops the new CA.
	api.set("idle", oldCA, oldCA)
	n.waitOn(oldCA, oldCA)
	n.stop()
}

func TestRotationStockAPI(t *testing.T) {
	oldCA := newTestCA(t, "cluster-ca")
	api := newRotAPI(t, oldCA, rotToken)
	api.noBundle = true
	n := newRotNode(t, api, oldCA)
	n.start()
	n.waitOn(oldCA, oldCA)
	polls := api.pollCount()
	require.Eventually(t, func() bool { return api.pollCount() > polls+2 }, 10*time.Second, 10*time.Millisecond)
	require.Nil(t, n.a.TrustBundle())
	st := n.a.Status()
	require.NotNil(t, st.Trust)
	require.False(t, st.Trust.Published)
	var words strings.Builder
	st.Describe(&words, time.Now())
	require.Contains(t, words.String(), "trust bundle: none published by the API")
	n.waitOn(oldCA, oldCA)
	n.stop()
}

// TestRotationWhileAway: the node was off during a whole rotation; its
// roots do not verify the API any more and its certificate is refused. It
// reads the bundle from metadata and bootstraps with the token, no restart.
func TestRotationWhileAway(t *testing.T) {
	oldCA, newCA := newTestCA(t, "cluster-ca"), newTestCA(t, "cluster-ca")
	api := newRotAPI(t, oldCA, rotToken)
	n := newRotNode(t, api, oldCA)
	n.start()
	n.waitOn(oldCA, oldCA)
	n.stop()

	api.set("idle", newCA, newCA) // start ... complete, while the node was off
	require.NoError(t, n.md.SetData(n.mdData(oldCA, []*testCA{newCA})))
	n.start()
	n.waitOn(newCA, newCA)
	require.Eventually(t, func() bool {
		b := n.a.TrustBundle()
		return b != nil && b.ActivePin == bootstrap.SPKIPin(newCA.cert)
	}, 10*time.Second, 10*time.Millisecond, "the bundle read after the bootstrap")
	n.stop()
}

func nextPEMCert(b []byte) (*x509.Certificate, []byte) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			return c, b
		}
	}
}

// TestRotationAwayUntilUpdateServers: the node was off from start until
// update-servers: the API presents a new-CA certificate its roots do not
// verify, but still accepts its old client certificate. It reads the
// bundle (old and new) from metadata and re-issues by renewal, without a
// bootstrap.
func TestRotationAwayUntilUpdateServers(t *testing.T) {
	oldCA, newCA := newTestCA(t, "cluster-ca"), newTestCA(t, "cluster-ca")
	api := newRotAPI(t, oldCA, rotToken)
	n := newRotNode(t, api, oldCA)
	n.start()
	n.waitOn(oldCA, oldCA)
	n.stop()

	api.set("update-servers", newCA, newCA, oldCA)
	require.NoError(t, n.md.SetData(n.mdData(oldCA, []*testCA{newCA, oldCA})))
	n.start()
	n.waitOn(newCA, newCA, oldCA)
	require.Eventually(t, func() bool {
		for _, c := range n.a.Status().Credentials {
			if c.Name == "client" {
				return c.Rotations == 2 // the first bootstrap, then one renewal
			}
		}
		return false
	}, 10*time.Second, 10*time.Millisecond)
	n.stop()
	for _, c := range n.a.Status().Credentials {
		if c.Name == "client" {
			require.Equal(t, 2, c.Rotations, "no second bootstrap")
		}
	}
}
