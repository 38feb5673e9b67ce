package agent_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/harness"
)

// TestRotationWithControlPlane runs a whole cluster-CA rotation of the
// real control plane (in-process) with two agents: start, automatic
// update-servers once both moved, complete; then a second rotation rolled
// back.
func TestRotationWithControlPlane(t *testing.T) {
	env := harness.Start(t, harness.Options{Nodes: []string{"node-1", "node-2"}, Clock: clock.Real{}, RotationCheck: 50 * time.Millisecond})
	var states []string
	for i := range env.Nodes {
		state := t.TempDir()
		cfg, err := agent.ParseConfig(fmt.Appendf(nil, "server: %s\nstateDir: %s\ntrust: {checkInterval: 100ms}\n", env.APIURL, state))
		require.NoError(t, err)
		a, err := agent.New(cfg, agent.Options{Metadata: env.MetadataClient(i)})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		states = append(states, state)
	}
	// every node's client certificate issued by the CA with pin, and its
	// ca.crt holding exactly pins.
	waitAll := func(pin string, pins ...string) {
		t.Helper()
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			for _, s := range states {
				roots := pemCerts(t, filepath.Join(s, "ca.crt"))
				var got []string
				for _, r := range roots {
					got = append(got, bootstrap.SPKIPin(r))
				}
				assert.Equal(c, pins, got, s)
				certs := pemCerts(t, filepath.Join(s, "pki", "kubelet-client-current.pem"))
				if assert.NotEmpty(c, certs) {
					ok := false
					for _, r := range roots {
						ok = ok || (bootstrap.SPKIPin(r) == pin && certs[0].CheckSignatureFrom(r) == nil)
					}
					assert.True(c, ok, "%s: client certificate not issued by %s", s, pin)
				}
			}
		}, 30*time.Second, 20*time.Millisecond)
	}
	st, err := env.RotationStatus()
	require.NoError(t, err)
	oldPin := st.Active
	waitAll(oldPin, oldPin)

	st, err = env.Rotate("start")
	require.NoError(t, err)
	newPin := st.Active
	require.NotEqual(t, oldPin, newPin)
	waitAll(newPin, newPin, oldPin)
	require.Eventually(t, func() bool {
		st, err := env.RotationStatus()
		return err == nil && st.Phase == "update-servers"
	}, 20*time.Second, 20*time.Millisecond, "update-servers once both nodes moved")
	_, err = env.Rotate("complete")
	require.NoError(t, err)
	waitAll(newPin, newPin)

	// A second rotation, rolled back in update-clients.
	st, err = env.Rotate("start")
	require.NoError(t, err)
	thirdPin := st.Active
	waitAll(thirdPin, thirdPin, newPin)
	st, err = env.Rotate("rollback")
	require.NoError(t, err)
	require.Equal(t, newPin, st.Active)
	waitAll(newPin, newPin, thirdPin)
	_, err = env.Rotate("complete")
	require.NoError(t, err)
	waitAll(newPin, newPin)
}

// pemCerts parses the certificates of a PEM file (none when unreadable).
func pemCerts(t *testing.T, path string) []*x509.Certificate {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []*x509.Certificate
	for {
		c, rest := nextPEMCert(b)
		if c == nil {
			return out
		}
		out = append(out, c)
		b = rest
	}
}
