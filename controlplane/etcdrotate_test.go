package controlplane_test

import (
	"crypto/ecdsa"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

func verifiesWith(t *testing.T, certPath string, caPEM []byte) bool {
	t.Helper()
	cas, err := pki.ParseCerts(caPEM)
	require.NoError(t, err)
	return parseCert(t, mustRead(t, certPath)).CheckSignatureFrom(cas[0]) == nil
}

// TestEtcdRotationSteps: which etcd certificate each step re-issues, a
// crash repaired by the next run, rollback, and the errors naming the
// phase.
func TestEtcdRotationSteps(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, controlplane.Init(controlplane.InitOptions{DataDir: dir}))
	p := controlplane.Paths{DataDir: dir}
	client, server := dir+"/pki/apiserver-etcd-client.crt", dir+"/etcd/server.crt"
	oldCA := mustRead(t, p.EtcdCACert())
	rot := func(action string) (string, error) {
		st, err := controlplane.RotateEtcd(controlplane.EtcdRotateOptions{DataDir: dir, Action: action})
		return st.Phase, err
	}

	_, err := rot("complete")
	assert.EqualError(t, err, "rotate complete: no rotation in progress (phase idle)")
	phase, err := rot("start")
	require.NoError(t, err)
	assert.Equal(t, "update-clients", phase)
	bundle := mustRead(t, p.EtcdCACert())
	newCA := bundle[:len(bundle)-len(oldCA)]
	assert.Equal(t, oldCA, bundle[len(newCA):], "bundle = new + old")
	assert.True(t, verifiesWith(t, client, newCA), "client certificate under the new CA")
	assert.True(t, verifiesWith(t, server, oldCA), "server certificate still under the old CA")
	fi, err := os.Stat(dir + "/etcd/ca-1.key")
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// A crash left the client pair half written: the next run repairs it.
	require.NoError(t, os.WriteFile(dir+"/pki/apiserver-etcd-client.key", mustRead(t, dir+"/etcd/server.key"), 0o600))
	phase, err = rot("status")
	require.NoError(t, err)
	assert.Equal(t, "update-clients", phase)
	k, err := pki.ReadKeyFile(dir + "/pki/apiserver-etcd-client.key")
	require.NoError(t, err)
	assert.True(t, parseCert(t, mustRead(t, client)).PublicKey.(*ecdsa.PublicKey).Equal(k.Public()), "pair matches again")

	phase, err = rot("complete")
	require.NoError(t, err)
	assert.Equal(t, "update-servers", phase)
	assert.True(t, verifiesWith(t, server, newCA))

	phase, err = rot("rollback")
	require.NoError(t, err)
	assert.Equal(t, "rollback", phase)
	assert.True(t, verifiesWith(t, client, oldCA))
	assert.True(t, verifiesWith(t, server, oldCA))
	_, err = rot("rollback")
	assert.ErrorContains(t, err, "(phase rollback)")

	phase, err = rot("complete")
	require.NoError(t, err)
	assert.Equal(t, "idle", phase)
	assert.Equal(t, oldCA, mustRead(t, p.EtcdCACert()))
	_, err = os.Stat(dir + "/etcd/ca-1.key")
	assert.True(t, os.IsNotExist(err), "the new etcd CA key is dropped")
	_, err = os.Stat(p.EtcdCAKey())
	assert.NoError(t, err)
}
