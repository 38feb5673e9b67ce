package controlplane_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/metadata"
)

// tunnelIssuer dials the tunnel port with creds, trusting roots, and
// returns the issuer CN of the server's certificate.
func tunnelIssuer(t *testing.T, addr string, creds nodeCreds, roots []byte) (string, error) {
	t.Helper()
	return tlsIssuer(t, addr, "http/1.1", creds, roots)
}

// tlsIssuer is tunnelIssuer for any TLS port, offering ALPN proto, which
// the server must pick.
func tlsIssuer(t *testing.T, addr, proto string, creds nodeCreds, roots []byte) (string, error) {
	t.Helper()
	pair, err := tls.X509KeyPair(creds.cert, creds.key)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(roots)
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair},
		ServerName: "localhost", NextProtos: []string{proto}}}
	conn, err := d.DialContext(ctxT(t), "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	cs := conn.(*tls.Conn).ConnectionState()
	require.Equal(t, proto, cs.NegotiatedProtocol)
	return cs.PeerCertificates[0].Issuer.CommonName, nil
}

// TestRotationRollback: start, a node moves to the new CA, rollback
// (signing and serving back on the old CA, both still trusted), the node
// moves back, complete drops the new CA. The tunnel port and the
// metadata data file follow every step.
func TestRotationRollback(t *testing.T) {
	c := newCluster(t, func(c *cluster) { c.metaData = c.meta; c.tunnelAddr = freeAddr(t); c.konnAddr = freeAddr(t) })
	p := controlplane.Paths{DataDir: c.dir}
	published := func() string {
		d, err := metadata.LoadFile(c.meta)
		require.NoError(t, err)
		return d.Project.Attributes[controlplane.BundleAttribute]
	}
	assert.Equal(t, string(c.caPEM), published())

	n1 := c.issueNode(t, c.withToken(c.token(time.Hour)), "node-1")
	n2 := c.issueNode(t, c.withToken(c.token(time.Hour)), "node-2") // stays on the old CA
	require.Eventually(t, func() bool { return c.rotationStatus(t).Nodes == 2 }, 20*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { _, err := tunnelIssuer(t, c.tunnelAddr, n1, c.caPEM); return err == nil }, 20*time.Second, 20*time.Millisecond)

	st, err := c.rotate(t, "start")
	require.NoError(t, err)
	newPin := st.Active
	bundle := mustRead(t, p.CACert())
	assert.Equal(t, string(bundle), published())
	n1 = c.issueNode(t, c.bundleClient(n1), "node-1")
	assert.Equal(t, newPin, issuerPin(t, n1.cert, string(bundle)))
	require.Eventually(t, func() bool { return c.rotationStatus(t).NodesNotOnActive == 1 }, 20*time.Second, 10*time.Millisecond)
	st, err = c.rotate(t, "complete") // node-2 is left: force update-servers
	require.NoError(t, err)
	assert.Equal(t, "update-servers", st.Phase)
	iss, err := tunnelIssuer(t, c.tunnelAddr, n2, bundle) // an old-CA client, trusting both
	require.NoError(t, err)
	assert.Equal(t, "nodetrust-cluster-ca-1", iss)
	iss, err = tlsIssuer(t, c.konnAddr, "h2", n2, bundle) // the Konnectivity frontend too
	require.NoError(t, err)
	assert.Equal(t, "nodetrust-cluster-ca-1", iss)

	st, err = c.rotate(t, "rollback")
	require.NoError(t, err)
	assert.Equal(t, "rollback", st.Phase)
	assert.Equal(t, pki.Pin(parseCert(t, c.caPEM)), st.Active)
	require.Len(t, st.Bundle, 2)
	assert.Equal(t, 1, st.NodesNotOnActive, "node-1 is on the new CA")
	cm := trustBundle(t, c.bundleClient(n1))
	assert.Equal(t, "rollback", cm["phase"])
	assert.Equal(t, string(mustRead(t, p.CACert())), cm["ca.crt"])
	iss, err = tunnelIssuer(t, c.tunnelAddr, n1, bundle) // a new-CA client is still accepted
	require.NoError(t, err)
	assert.Equal(t, "nodetrust-cluster-ca", iss, "servers are back on the old CA")

	n1 = c.issueNode(t, c.bundleClient(n1), "node-1")
	assert.Equal(t, pki.Pin(parseCert(t, c.caPEM)), issuerPin(t, n1.cert, string(bundle)), "the old CA signs again")
	require.Eventually(t, func() bool { return c.rotationStatus(t).NodesNotOnActive == 0 }, 20*time.Second, 10*time.Millisecond)

	st, err = c.rotate(t, "complete")
	require.NoError(t, err)
	assert.Equal(t, "idle", st.Phase)
	require.Len(t, st.Bundle, 1)
	assert.Equal(t, c.caPEM, mustRead(t, p.CACert()), "only the old CA is left")
	assert.Equal(t, string(c.caPEM), published())
	_, err = os.Stat(p.CAKey())
	assert.NoError(t, err, "the old CA key stays")
	_, err = os.Stat(p.SignerDir() + "/ca-1.key")
	assert.True(t, os.IsNotExist(err), "the new CA key is dropped")
	_, err = tunnelIssuer(t, c.tunnelAddr, n2, c.caPEM)
	require.NoError(t, err)
}

// TestPublishFailureIsNotFatal: a metadata data file that cannot take the
// bundle does not stop the control plane or a rotation; once fixed, the
// next check publishes.
func TestPublishFailureIsNotFatal(t *testing.T) {
	var bad string
	c := newCluster(t, func(c *cluster) {
		bad = filepath.Join(c.dir, "published.yaml")
		require.NoError(t, os.WriteFile(bad, []byte("project: [1]\n"), 0o600))
		c.metaData = bad
	})
	_, err := c.rotate(t, "start")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bad, mustRead(t, c.meta), 0o600))
	bundle := string(mustRead(t, controlplane.Paths{DataDir: c.dir}.CACert()))
	require.Eventually(t, func() bool {
		c.clk.Advance(controlplane.DefaultRotationCheck)
		d, err := metadata.LoadFile(bad)
		return err == nil && d.Project.Attributes[controlplane.BundleAttribute] == bundle
	}, 20*time.Second, 20*time.Millisecond)
}
