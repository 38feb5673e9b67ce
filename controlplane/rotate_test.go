package controlplane_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/apiserver"
	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

// nodeCreds is a node's client certificate and key.
type nodeCreds struct{ cert, key []byte }

// issueNode has a kubelet client certificate issued for node through cl
// (a bootstrap token or the node's own certificate).
func (c *cluster) issueNode(t *testing.T, cl kubernetes.Interface, node string) nodeCreds {
	t.Helper()
	ctx := ctxT(t)
	obj, _, keyPEM := nodeCSR(t, "", "system:node:"+node, []string{"system:nodes"}, csrpolicy.SignerKubeletClient, clientUsages, nil, nil)
	name, uid, err := csr.RequestCertificateWithContext(ctx, cl, obj.Spec.Request, "", obj.Spec.SignerName, nil, obj.Spec.Usages, nil)
	require.NoError(t, err)
	certPEM, err := csr.WaitForCertificate(ctx, cl, name, uid)
	require.NoError(t, err)
	return nodeCreds{certPEM, keyPEM}
}

// bundleClient is a client trusting the published bundle.
func (c *cluster) bundleClient(creds nodeCreds) kubernetes.Interface {
	cfg := c.restConfig()
	cfg.CAData, _ = os.ReadFile(controlplane.Paths{DataDir: c.dir}.CACert())
	cfg.CertData, cfg.KeyData = creds.cert, creds.key
	return kubernetes.NewForConfigOrDie(cfg)
}

// trustBundle reads the ConfigMap with client-go's typed client.
func trustBundle(t *testing.T, cl kubernetes.Interface) map[string]string {
	t.Helper()
	cm, err := cl.CoreV1().ConfigMaps(apiserver.TrustBundleNamespace).Get(ctxT(t), apiserver.TrustBundleName, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, cm.Data["generation"], cm.ResourceVersion)
	return cm.Data
}

// rotate runs a rotation action through the admin API.
func (c *cluster) rotate(t *testing.T, action string) (apiserver.RotationStatus, error) {
	t.Helper()
	var st apiserver.RotationStatus
	b, err := c.admin().CoreV1().RESTClient().Post().AbsPath("/apis/nodetrust.dev/v1/rotation/" + action).Do(ctxT(t)).Raw()
	if err != nil {
		return st, fmt.Errorf("%w: %s", err, b)
	}
	require.NoError(t, json.Unmarshal(b, &st))
	return st, nil
}

func (c *cluster) rotationStatus(t *testing.T) apiserver.RotationStatus {
	t.Helper()
	var st apiserver.RotationStatus
	b, err := c.admin().CoreV1().RESTClient().Get().AbsPath("/apis/nodetrust.dev/v1/rotation").DoRaw(ctxT(t))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &st))
	return st
}

func issuerPin(t *testing.T, certPEM []byte, bundle string) string {
	t.Helper()
	cert := parseCert(t, certPEM)
	cas, err := pki.ParseCerts([]byte(bundle))
	require.NoError(t, err)
	for _, ca := range cas {
		if cert.CheckSignatureFrom(ca) == nil {
			return pki.Pin(ca)
		}
	}
	return ""
}

// TestRotationFullCycle: start (new CA signs, both trusted), nodes move,
// update-servers (serving certificate of the new CA, live), complete (old
// CA refused), with the ConfigMap following every step.
func TestRotationFullCycle(t *testing.T) {
	c := newCluster(t)
	ctx := ctxT(t)
	oldCA := parseCert(t, c.caPEM)
	oldPin := pki.Pin(oldCA)
	oldCAKey, err := pki.ReadKeyFile(controlplane.Paths{DataDir: c.dir}.CAKey()) // to forge an old-CA certificate later
	require.NoError(t, err)

	cm := trustBundle(t, c.withToken(c.token(time.Hour)))
	assert.Equal(t, "idle", cm["phase"])
	assert.Equal(t, oldPin, cm["active"])
	assert.Equal(t, string(c.caPEM), cm["ca.crt"])
	gen0 := cm["generation"]

	n1 := c.issueNode(t, c.withToken(c.token(time.Hour)), "node-1")
	n2 := c.issueNode(t, c.withToken(c.token(time.Hour)), "node-2")
	require.Eventually(t, func() bool { return c.rotationStatus(t).Nodes == 2 }, 20*time.Second, 10*time.Millisecond)
	assert.Equal(t, 0, c.rotationStatus(t).NodesNotOnActive)

	_, err = c.rotate(t, "complete")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "rotate complete: no rotation in progress (phase idle)")

	st, err := c.rotate(t, "start")
	require.NoError(t, err)
	assert.Equal(t, "update-clients", st.Phase)
	require.NoError(t, promtestutil.GatherAndCompare(c.srv.Metrics, strings.NewReader(`
# HELP nodetrust_controlplane_ca_rotation_nodes Nodes with an issued client certificate, by whether its CA is the active one (on_active: true or false).
# TYPE nodetrust_controlplane_ca_rotation_nodes gauge
nodetrust_controlplane_ca_rotation_nodes{on_active="false"} 2
nodetrust_controlplane_ca_rotation_nodes{on_active="true"} 0
# HELP nodetrust_controlplane_ca_rotation_phase Cluster-CA rotation phase: 1 for the current one (idle, update-clients, update-servers, rollback).
# TYPE nodetrust_controlplane_ca_rotation_phase gauge
nodetrust_controlplane_ca_rotation_phase{phase="idle"} 0
nodetrust_controlplane_ca_rotation_phase{phase="rollback"} 0
nodetrust_controlplane_ca_rotation_phase{phase="update-clients"} 1
nodetrust_controlplane_ca_rotation_phase{phase="update-servers"} 0
`), "nodetrust_controlplane_ca_rotation_nodes", "nodetrust_controlplane_ca_rotation_phase"))
	assert.NotEqual(t, oldPin, st.Active)
	assert.Equal(t, 2, st.NodesNotOnActive)
	newPin := st.Active
	for _, k := range []string{"pki/ca-1/apiserver.key", "pki/ca-1/admin.key", "signer/ca-1.key", "admin.kubeconfig"} {
		fi, err := os.Stat(filepath.Join(c.dir, k))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), k)
	}

	// Both CAs' client certificates work; the server still presents the
	// old CA's certificate; the ConfigMap names the new CA active.
	cm = trustBundle(t, c.withCert(n1.cert, n1.key))
	assert.Equal(t, "update-clients", cm["phase"])
	assert.Equal(t, newPin, cm["active"])
	assert.NotEqual(t, gen0, cm["generation"])
	bundleCAs, err := pki.ParseCerts([]byte(cm["ca.crt"]))
	require.NoError(t, err)
	require.Len(t, bundleCAs, 2)
	assert.Equal(t, newPin, pki.Pin(bundleCAs[0]), "active CA first")

	// node-1 renews with its old certificate: the new CA signs.
	n1 = c.issueNode(t, c.bundleClient(n1), "node-1")
	assert.Equal(t, newPin, issuerPin(t, n1.cert, cm["ca.crt"]))
	require.Eventually(t, func() bool { return c.rotationStatus(t).NodesNotOnActive == 1 }, 20*time.Second, 10*time.Millisecond)
	assert.Equal(t, "update-clients", c.rotationStatus(t).Phase, "node-2 is still on the old CA")

	// node-2 renews: no node left on the old CA, servers move by themselves.
	n2 = c.issueNode(t, c.bundleClient(n2), "node-2")
	require.Eventually(t, func() bool { return c.rotationStatus(t).Phase == "update-servers" }, 20*time.Second, 10*time.Millisecond)

	// A client trusting only the new CA connects now.
	onlyNew := c.restConfig()
	onlyNew.CAData = pki.EncodeCert(bundleCAs[0])
	onlyNew.CertData, onlyNew.KeyData = n1.cert, n1.key
	_, err = kubernetes.NewForConfigOrDie(onlyNew).CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)

	st, err = c.rotate(t, "complete")
	require.NoError(t, err)
	assert.Equal(t, "idle", st.Phase)
	assert.Equal(t, newPin, st.Active)
	require.Len(t, st.Bundle, 1)

	// An old-CA client certificate is refused now.
	oldKey, _ := pki.GenerateKey()
	old, err := pki.Issue(pki.LeafSpec{CommonName: "system:node:node-9", Organizations: []string{"system:nodes"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		NotBefore: c.clk.Now().Add(-time.Minute), NotAfter: c.clk.Now().Add(time.Hour)}, oldKey.Public(), oldCA, oldCAKey)
	require.NoError(t, err)
	keyPEM, _ := pki.EncodeKey(oldKey)
	_, err = c.bundleClient(nodeCreds{pki.EncodeCert(old), keyPEM}).CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	require.Error(t, err, "an old-CA client certificate after complete")
	_, err = os.Stat(controlplane.Paths{DataDir: c.dir}.CAKey())
	assert.True(t, os.IsNotExist(err), "the signer deleted the old CA key")
	// The new certificates, and the rewritten admin kubeconfig, work.
	_, err = c.bundleClient(n2).CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	assert.Equal(t, "idle", trustBundle(t, c.admin())["phase"])
	assert.Equal(t, pki.EncodeCert(bundleCAs[0]), mustRead(t, controlplane.Paths{DataDir: c.dir}.CACert()))

	// The signer starts without the key made by init, and signs with the
	// new CA.
	c.stopSg()
	c.startSigner()
	n2 = c.issueNode(t, c.bundleClient(n2), "node-2")
	assert.Equal(t, newPin, issuerPin(t, n2.cert, cm["ca.crt"]))

	// A second rotation.
	st, err = c.rotate(t, "start")
	require.NoError(t, err)
	require.Equal(t, 2, st.Bundle[0].ID)
	for st.Phase != "idle" {
		st, err = c.rotate(t, "complete")
		require.NoError(t, err)
	}
	require.Len(t, st.Bundle, 1)
	assert.Equal(t, 2, st.Bundle[0].ID)
	_, err = c.admin().CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	require.NoError(t, err, "the admin kubeconfig follows a second rotation")
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// TestServingCertSwapKeepsConnections: clients trusting old and new
// never fail from start to complete, on new connections or on one kept
// open; after update-servers a client trusting only the new CA connects
// and one trusting only the old CA no longer does.
func TestServingCertSwapKeepsConnections(t *testing.T) {
	c := newCluster(t)
	_ = c.issueNode(t, c.withToken(c.token(time.Hour)), "node-1") // keeps update-clients until forced
	require.Eventually(t, func() bool { return c.rotationStatus(t).Nodes == 1 }, 20*time.Second, 10*time.Millisecond)
	_, err := c.rotate(t, "start")
	require.NoError(t, err)
	bundle := mustRead(t, controlplane.Paths{DataDir: c.dir}.CACert())
	client := func(roots []byte, keepAlive bool) *http.Client {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(roots)
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: !keepAlive}, Timeout: 10 * time.Second}
		t.Cleanup(hc.CloseIdleConnections)
		return hc
	}
	get := func(hc *http.Client) (*http.Response, error) {
		resp, err := hc.Get("https://" + c.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return resp, err
	}
	fresh, kept := client(bundle, false), client(bundle, true)
	resp, err := get(kept)
	require.NoError(t, err)
	oldIssuer := resp.TLS.PeerCertificates[0].Issuer.CommonName

	stop := make(chan struct{})
	done := make(chan [2]int)
	go func() {
		var ok, failed int
		for {
			select {
			case <-stop:
				done <- [2]int{ok, failed}
				return
			default:
			}
			for _, hc := range []*http.Client{fresh, kept} {
				if _, err := get(hc); err != nil {
					failed++
					t.Logf("GET during the rotation: %v", err)
				} else {
					ok++
				}
			}
		}
	}()
	st, err := c.rotate(t, "complete") // forces update-servers
	require.NoError(t, err)
	require.Equal(t, "update-servers", st.Phase)
	resp, err = get(client(bundle, false))
	require.NoError(t, err)
	assert.NotEqual(t, oldIssuer, resp.TLS.PeerCertificates[0].Issuer.CommonName, "a new connection gets the new CA's certificate")
	cas, err := pki.ParseCerts(bundle)
	require.NoError(t, err)
	_, err = get(client(pki.EncodeCert(cas[0]), false))
	require.NoError(t, err, "a client trusting only the new CA")
	_, err = get(client(c.caPEM, false))
	require.Error(t, err, "a client trusting only the old CA")
	st, err = c.rotate(t, "complete")
	require.NoError(t, err)
	require.Equal(t, "idle", st.Phase)
	close(stop)
	counts := <-done
	assert.Zero(t, counts[1], "requests failed during the rotation")
	assert.Positive(t, counts[0])
}

// TestTrustBundleAccess: every authenticated caller reads the ConfigMap;
// anonymous callers do not, and no other ConfigMap exists.
func TestTrustBundleAccess(t *testing.T) {
	c := newCluster(t)
	n1 := c.issueNode(t, c.withToken(c.token(time.Hour)), "node-1")
	for _, cl := range []kubernetes.Interface{c.admin(), c.withToken(c.token(time.Hour)), c.withCert(n1.cert, n1.key)} {
		assert.Equal(t, "idle", trustBundle(t, cl)["phase"])
		_, err := cl.CoreV1().ConfigMaps("kube-system").Get(ctxT(t), "kube-root-ca.crt", metav1.GetOptions{})
		assert.True(t, apierrors.IsNotFound(err), "%v", err)
	}
	anon := kubernetes.NewForConfigOrDie(c.restConfig())
	_, err := anon.CoreV1().ConfigMaps(apiserver.TrustBundleNamespace).Get(ctxT(t), apiserver.TrustBundleName, metav1.GetOptions{})
	assert.True(t, apierrors.IsUnauthorized(err), "%v", err)
	_, err = c.rotate(t, "start")
	require.NoError(t, err)
	_, err = c.withCert(n1.cert, n1.key).CoreV1().RESTClient().Post().AbsPath("/apis/nodetrust.dev/v1/rotation/rollback").Do(ctxT(t)).Raw()
	assert.True(t, apierrors.IsForbidden(err), "a node may not drive the rotation: %v", err)
}
