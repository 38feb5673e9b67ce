package signer

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

func createRequest(t *testing.T, id int, adminCN string, adminOrgs []string) CreateRequest {
	t.Helper()
	ak, _ := pki.GenerateKey()
	sk, _ := pki.GenerateKey()
	admin, err := pki.NewCSR(ak, adminCN, adminOrgs, nil, nil)
	require.NoError(t, err)
	serving, err := pki.NewCSR(sk, ServingCommonName, nil, []string{"localhost"}, nil)
	require.NoError(t, err)
	return CreateRequest{ID: id, AdminCSR: admin, ServingCSR: serving}
}

func parse(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	c, err := pki.ParseCerts(b)
	require.NoError(t, err)
	return c[0]
}

// TestCreateCAOverTheSocket: the API process asks for a new CA, gets the
// certificates, and then signs with whichever CA it names; the key stays
// in the signer's folder, 0600.
func TestCreateCAOverTheSocket(t *testing.T) {
	srv, sock := newTestSigner(t)
	srv.cfg.Dir = t.TempDir()
	srv.cfg.MaxDuration = time.Minute // node certificates only
	serve(t, srv, sock)
	cl := NewClient(sock)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	oldPin := Pin(srv.cfg.CACert)

	req := createRequest(t, 1, AdminCommonName, []string{csrpolicy.MastersGroup})
	a, err := cl.CreateCA(ctx, req)
	require.NoError(t, err)
	ca := parse(t, a.CA)
	assert.True(t, ca.IsCA)
	for _, b := range [][]byte{a.Admin, a.Serving} {
		require.NoError(t, parse(t, b).CheckSignatureFrom(ca))
	}
	assert.Equal(t, []string{csrpolicy.MastersGroup}, parse(t, a.Admin).Subject.Organization)
	for _, b := range [][]byte{a.Admin, a.Serving} {
		c := parse(t, b)
		assert.Equal(t, ControlPlaneCertValidity+pki.Backdate, c.NotAfter.Sub(c.NotBefore),
			"control-plane certificates outlive the signer's node MaxDuration (%v)", srv.cfg.MaxDuration)
	}
	fi, err := os.Stat(filepath.Join(srv.cfg.Dir, "ca-1.key"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// The same id again, even with other requests, answers the same.
	again, err := cl.CreateCA(ctx, createRequest(t, 1, AdminCommonName, []string{csrpolicy.MastersGroup}))
	require.NoError(t, err)
	assert.Equal(t, a, again)

	cas, err := cl.CAs(ctx)
	require.NoError(t, err)
	assert.Equal(t, []CAInfo{{0, oldPin}, {1, Pin(ca)}}, cas)

	// Sign with the CA the client names.
	for _, pin := range []string{oldPin, Pin(ca), ""} {
		cl.SetCA(pin)
		csr, _ := approvedCSR(t, "n1")
		b, err := cl.Sign(ctx, csr)
		require.NoError(t, err)
		want := ca // "" means the newest
		if pin == oldPin {
			want = srv.cfg.CACert
		}
		assert.NoError(t, parse(t, b).CheckSignatureFrom(want), "pin %q", pin)
	}
	cl.SetCA("sha256:0000")
	csr, _ := approvedCSR(t, "n1")
	_, err = cl.Sign(ctx, csr)
	assert.ErrorContains(t, err, "holds no key for CA sha256:0000")

	// A fresh signer on the folder holds the same CA.
	held, err := LoadDir(srv.cfg.Dir)
	require.NoError(t, err)
	require.Len(t, held, 1)
	assert.Equal(t, Pin(ca), Pin(held[0].Cert))

	// Drop the old CA: no more signing with it; the only CA cannot go.
	require.NoError(t, cl.DropCA(ctx, oldPin))
	cl.SetCA(oldPin)
	_, err = cl.Sign(ctx, csr)
	assert.Error(t, err)
	err = cl.DropCA(ctx, Pin(ca))
	assert.True(t, errors.Is(err, ErrRejected), "%v", err)
	_, err = os.Stat(filepath.Join(srv.cfg.Dir, "ca-1.key"))
	assert.NoError(t, err)
}

// TestCreateCARefuses: the admin certificate is system:masters for
// nodetrust-admin and nothing else; without a folder no CA is made.
func TestCreateCARefuses(t *testing.T) {
	srv, _ := newTestSigner(t)
	_, err := srv.CreateCA(createRequest(t, 1, AdminCommonName, []string{csrpolicy.MastersGroup}))
	assert.ErrorContains(t, err, "no folder")
	srv.cfg.Dir = t.TempDir()
	tests := []struct {
		name string
		req  CreateRequest
	}{
		{"other admin name", createRequest(t, 1, "mallory", []string{csrpolicy.MastersGroup})},
		{"extra group", createRequest(t, 1, AdminCommonName, []string{csrpolicy.MastersGroup, "x"})},
		{"id 0", createRequest(t, 0, AdminCommonName, []string{csrpolicy.MastersGroup})},
		{"garbage", CreateRequest{ID: 2, AdminCSR: []byte("x"), ServingCSR: []byte("y")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := srv.CreateCA(tt.req)
			require.Error(t, err)
			assert.True(t, errors.Is(err, csrpolicy.ErrPolicy), "%v", err)
		})
	}
	ents, _ := os.ReadDir(srv.cfg.Dir)
	assert.Empty(t, ents, "a refused request leaves nothing behind")
}
