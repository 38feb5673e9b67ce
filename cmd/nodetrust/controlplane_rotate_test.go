package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/controlplane/apiserver"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/harness"
)

func TestControlplaneRotateHelp(t *testing.T) {
	code, out, _ := run(t, context.Background(), "controlplane", "rotate", "--help")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "Example:")
	assert.Contains(t, out, "nodetrust controlplane rotate start")
}

// hashTree returns the SHA-256 of every file under dir whose path (from
// dir) passes keep.
func hashTree(t *testing.T, dir string, keep func(rel string) bool) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSocket != 0 {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if keep(rel) {
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			out[rel] = sha256.Sum256(b)
		}
		return nil
	}))
	return out
}

func isEtcdFile(rel string) bool {
	return strings.HasPrefix(rel, "etcd/") || strings.HasPrefix(rel, "pki/apiserver-etcd-client.")
}

// The rotate commands against a running control plane: the cluster CA
// through the admin API, the etcd CA on the files; neither touches the
// other's files.
func TestControlplaneRotateCommands(t *testing.T) {
	env := harness.Start(t, harness.Options{Clock: clock.Real{}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cp := func(args ...string) (int, string, string) {
		return run(t, ctx, append(append([]string{"controlplane", "rotate"}, args...), "--data-dir", env.Dir)...)
	}
	must := func(args ...string) string {
		t.Helper()
		code, out, errOut := cp(args...)
		require.Equal(t, 0, code, "%v: %s", args, errOut)
		return out
	}
	status := func(args ...string) apiserver.RotationStatus {
		t.Helper()
		var st apiserver.RotationStatus
		require.NoError(t, json.Unmarshal([]byte(must(append([]string{"status", "--json"}, args...)...)), &st))
		return st
	}
	assert.Contains(t, must("status"), "cluster CA rotation: phase idle")

	code, _, errOut := cp("rollback")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "rotate rollback: no rotation in progress (phase idle)")

	// etcd: a whole rotation leaves the cluster CA files as they were.
	notEtcd := func(rel string) bool {
		return !isEtcdFile(rel) && !strings.HasPrefix(rel, "store/") && !strings.HasPrefix(rel, "run/")
	}
	clusterBefore := hashTree(t, env.Dir, notEtcd)
	etcdBefore := hashTree(t, env.Dir, isEtcdFile)
	assert.Contains(t, must("start", "--ca", "etcd"), "etcd CA rotation: phase update-clients")
	assert.Contains(t, must("complete", "--ca", "etcd"), "phase update-servers")
	st := status("--ca", "etcd")
	assert.Len(t, st.Bundle, 2)
	assert.Contains(t, must("complete", "--ca", "etcd"), "phase idle")
	assert.Equal(t, clusterBefore, hashTree(t, env.Dir, notEtcd), "etcd rotation changed cluster files")
	etcdAfter := hashTree(t, env.Dir, isEtcdFile)
	assert.NotEqual(t, etcdBefore["etcd/ca.crt"], etcdAfter["etcd/ca.crt"])
	assert.NotEqual(t, etcdBefore["etcd/server.crt"], etcdAfter["etcd/server.crt"])
	assert.NotEqual(t, etcdBefore["pki/apiserver-etcd-client.crt"], etcdAfter["pki/apiserver-etcd-client.crt"])
	_, err := os.Stat(filepath.Join(env.Dir, "etcd", "ca.key"))
	assert.True(t, os.IsNotExist(err), "old etcd CA key dropped")

	// cluster: start, then complete until idle; the etcd files stay.
	out := must("start")
	assert.Contains(t, out, "cluster CA rotation: phase update-")
	st = status()
	require.Len(t, st.Bundle, 2)
	assert.True(t, st.Bundle[0].Active)
	for st.Phase != "idle" {
		must("complete")
		st = status()
	}
	assert.Len(t, st.Bundle, 1)
	assert.Equal(t, etcdAfter, hashTree(t, env.Dir, isEtcdFile), "cluster rotation changed etcd files")
	assert.Contains(t, must("status"), "next: nothing to do")
}
