package controlplane_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/rotation"
)

// TestRotationResumesAfterCrash: the state is saved before the files
// follow it. A crash after the save (simulated by putting the old files
// back while both processes are down) is repaired at the next start, and
// signing goes on with the new CA.
func TestRotationResumesAfterCrash(t *testing.T) {
	c := newCluster(t)
	p := controlplane.Paths{DataDir: c.dir}
	n1 := c.issueNode(t, c.withToken(c.token(time.Hour)), "node-1")
	kubeconfigBefore := mustRead(t, p.AdminKubeconfig())
	st, err := c.rotate(t, "start")
	require.NoError(t, err)
	bundle := mustRead(t, p.CACert())
	c.stop()
	c.stopSg()

	// The crash came between saving the state and writing the files.
	require.NoError(t, os.WriteFile(p.CACert(), c.caPEM, 0o644))
	require.NoError(t, os.WriteFile(p.AdminKubeconfig(), kubeconfigBefore, 0o600))
	saved, err := rotation.Load(p.RotationState())
	require.NoError(t, err)
	assert.Equal(t, rotation.UpdateClients, saved.Phase)

	c.startSigner()
	c.start()
	assert.Equal(t, bundle, mustRead(t, p.CACert()), "bundle rewritten at start")
	assert.Equal(t, st.Active, c.rotationStatus(t).Active)
	n1 = c.issueNode(t, c.bundleClient(n1), "node-1")
	assert.Equal(t, st.Active, issuerPin(t, n1.cert, string(bundle)), "the restarted signer signs with the new CA")
}

// TestRotationStartRetriedAfterCrash: start crashed after the signer made
// the CA but before the state was saved; running start again finds the
// same CA instead of making another.
func TestRotationStartRetriedAfterCrash(t *testing.T) {
	c := newCluster(t)
	p := controlplane.Paths{DataDir: c.dir}
	kubeconfig := mustRead(t, p.AdminKubeconfig())
	st, err := c.rotate(t, "start")
	require.NoError(t, err)
	c.stop()
	// Forget the saved state, as if the crash came just before the save.
	require.NoError(t, os.Remove(p.RotationState()))
	require.NoError(t, os.WriteFile(p.CACert(), c.caPEM, 0o644))
	require.NoError(t, os.WriteFile(p.AdminKubeconfig(), kubeconfig, 0o600))
	c.start()
	assert.Equal(t, "idle", c.rotationStatus(t).Phase)
	again, err := c.rotate(t, "start")
	require.NoError(t, err)
	assert.Equal(t, st.Active, again.Active, "the same new CA")
	assert.Equal(t, st.Generation, again.Generation)
}

// TestAPIProcessNeedsNoCAKey runs the signer on a folder of its own and
// the API process on one without any CA key, through a whole rotation:
// the API process never needs a CA key, and none ends up in its folder.
func TestAPIProcessNeedsNoCAKey(t *testing.T) {
	apiDir, err := os.MkdirTemp("", "ntapi")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(apiDir) })
	sgDir, err := os.MkdirTemp("", "ntsg")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sgDir) })
	addr := freeAddr(t)
	require.NoError(t, controlplane.Init(controlplane.InitOptions{DataDir: apiDir, Server: "https://" + addr}))
	api, sg := controlplane.Paths{DataDir: apiDir}, controlplane.Paths{DataDir: sgDir}
	// Move signer/ (the CA key) out; the signer gets the CA certificate.
	require.NoError(t, os.Rename(api.SignerDir(), sg.SignerDir()))
	require.NoError(t, os.MkdirAll(filepath.Dir(sg.CACert()), 0o700))
	require.NoError(t, os.WriteFile(sg.CACert(), mustRead(t, api.CACert()), 0o644))
	require.NoError(t, os.Remove(api.EtcdCAKey())) // not the API's either

	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(sgDir, "s.sock")
	sgDone := make(chan error, 1)
	go func() { sgDone <- controlplane.RunSigner(ctx, controlplane.SignerConfig{DataDir: sgDir, Socket: sock}) }()
	require.Eventually(t, func() bool { _, err := os.Stat(sock); return err == nil }, 10*time.Second, 5*time.Millisecond)
	srv, err := controlplane.NewServer(controlplane.Config{DataDir: apiDir, SignerSocket: sock, RotationCheck: 50 * time.Millisecond})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	apiDone := make(chan error, 1)
	go func() { apiDone <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-apiDone)
		assert.NoError(t, <-sgDone)
	})
	c := &cluster{t: t, dir: apiDir, addr: addr}
	_, err = c.rotate(t, "start")
	require.NoError(t, err)
	for c.rotationStatus(t).Phase != "idle" {
		_, err = c.rotate(t, "complete")
		require.NoError(t, err)
	}
	assert.Len(t, c.rotationStatus(t).Bundle, 1)

	// No file of the API's folder holds the key of a CA it trusted.
	cas := [][]byte{}
	require.NoError(t, filepath.WalkDir(sg.SignerDir(), func(path string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(path, ".key") {
			fi, _ := d.Info()
			assert.Equal(t, fs.FileMode(0o600), fi.Mode().Perm(), path)
			k, err := pki.ReadKeyFile(path)
			require.NoError(t, err)
			der, _ := x509.MarshalPKIXPublicKey(k.Public())
			cas = append(cas, der)
		}
		return err
	}))
	require.NotEmpty(t, cas)
	require.NoError(t, filepath.WalkDir(apiDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSocket != 0 {
			return err
		}
		b, _ := os.ReadFile(path)
		for rest := b; ; {
			var blk *pem.Block
			if blk, rest = pem.Decode(rest); blk == nil {
				break
			}
			if strings.Contains(blk.Type, "PRIVATE KEY") {
				k, err := pki.ParseKey(pem.EncodeToMemory(blk))
				require.NoError(t, err)
				der, _ := x509.MarshalPKIXPublicKey(k.Public())
				for _, ca := range cas {
					assert.False(t, bytes.Equal(der, ca), "%s holds a CA key", path)
				}
			}
		}
		return nil
	}))
}

// TestNodeCAsSurviveCollection: a node's CA is still known after a
// restart once its CSR is gone (collected after an hour).
func TestNodeCAsSurviveCollection(t *testing.T) {
	c := newCluster(t)
	c.issueNode(t, c.withToken(c.token(time.Hour)), "node-1")
	require.Eventually(t, func() bool { return c.rotationStatus(t).Nodes == 1 }, 20*time.Second, 10*time.Millisecond)
	c.stop() // writes the records
	c.start()
	list, err := c.admin().CertificatesV1().CertificateSigningRequests().List(ctxT(t), metav1.ListOptions{})
	require.NoError(t, err)
	for _, r := range list.Items {
		require.NoError(t, c.admin().CertificatesV1().CertificateSigningRequests().Delete(ctxT(t), r.Name, metav1.DeleteOptions{}))
	}
	c.stop()
	c.start()
	st := c.rotationStatus(t)
	assert.Equal(t, 1, st.Nodes)
	assert.Equal(t, 1, st.Bundle[0].Nodes)
}
