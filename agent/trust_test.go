package agent_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/bootstrap"
)

// testCA is a root CA that can sign leaves.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial int64 = 100

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	require.NoError(t, err)
	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{cert: c, key: k, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf signs a client (server false) or server certificate valid from
// notBefore to notAfter.
func (ca *testCA) leaf(t *testing.T, server bool, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "system:node:n1"},
		NotBefore: notBefore, NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.Subject.CommonName = "api"
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, k.Public(), ca.key)
	require.NoError(t, err)
	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return c
}

func bundleData(active *testCA, gen string, cas ...*testCA) map[string]string {
	var b []byte
	for _, c := range cas {
		b = append(b, c.pem...)
	}
	return map[string]string{"ca.crt": string(b), "active": bootstrap.SPKIPin(active.cert), "phase": "update-clients", "generation": gen}
}

func TestParseBundle(t *testing.T) {
	oldCA, newCA, other := newTestCA(t, "old"), newTestCA(t, "new"), newTestCA(t, "other")
	leafPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: oldCA.leaf(t, false, time.Now(), time.Now().Add(time.Hour)).Raw})
	tests := []struct {
		name    string
		data    map[string]string
		wantErr bool
		roots   int
	}{
		{name: "old and new, new active", data: bundleData(newCA, "2", newCA, oldCA), roots: 2},
		{name: "one CA, idle", data: bundleData(oldCA, "1", oldCA), roots: 1},
		{name: "active not in the bundle", data: bundleData(other, "2", newCA, oldCA), wantErr: true},
		{name: "no certificate", data: map[string]string{"ca.crt": "", "active": bootstrap.SPKIPin(oldCA.cert), "generation": "1"}, wantErr: true},
		{name: "a leaf in the bundle", data: map[string]string{"ca.crt": string(oldCA.pem) + string(leafPEM), "active": bootstrap.SPKIPin(oldCA.cert), "generation": "1"}, wantErr: true},
		{name: "generation not a number", data: bundleData(oldCA, "x", oldCA), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := agent.ParseBundle(tt.data)
			if tt.wantErr {
				require.ErrorIs(t, err, agent.ErrBundle)
				return
			}
			require.NoError(t, err)
			require.Len(t, b.Roots, tt.roots)
			require.Equal(t, tt.data["active"], bootstrap.SPKIPin(b.Active))
		})
	}
}

// TestAcceptBundle: "is this bundle acceptable?"
func TestAcceptBundle(t *testing.T) {
	now := time.Now()
	oldCA, newCA := newTestCA(t, "old"), newTestCA(t, "new")
	parse := func(d map[string]string) *agent.Bundle {
		b, err := agent.ParseBundle(d)
		require.NoError(t, err)
		return b
	}
	onOld := oldCA.leaf(t, false, now.Add(-time.Minute), now.Add(time.Hour))
	onNew := newCA.leaf(t, false, now.Add(-time.Minute), now.Add(time.Hour))
	serverOld := []*x509.Certificate{oldCA.leaf(t, true, now.Add(-time.Minute), now.Add(time.Hour))}
	serverNew := []*x509.Certificate{newCA.leaf(t, true, now.Add(-time.Minute), now.Add(time.Hour))}
	tests := []struct {
		name    string
		current *x509.Certificate
		server  []*x509.Certificate
		bundle  *agent.Bundle
		ok      bool
	}{
		{name: "start: old+new, node on old", current: onOld, server: serverOld, bundle: parse(bundleData(newCA, "2", newCA, oldCA)), ok: true},
		{name: "complete: new only, node on new", current: onNew, server: serverNew, bundle: parse(bundleData(newCA, "4", newCA)), ok: true},
		{name: "forced complete: new only, node on old, server on new", current: onOld, server: serverNew, bundle: parse(bundleData(newCA, "4", newCA)), ok: true},
		{name: "new only, node on old, server still on old: would strand the node", current: onOld, server: serverOld, bundle: parse(bundleData(newCA, "4", newCA))},
		{name: "new only, node on old, no server chain", current: onOld, bundle: parse(bundleData(newCA, "4", newCA))},
		{name: "rollback complete: old only, node on old", current: onOld, server: serverOld, bundle: parse(bundleData(oldCA, "5", oldCA)), ok: true},
		{name: "no client certificate yet", server: serverOld, bundle: parse(bundleData(oldCA, "1", oldCA)), ok: true},
		{name: "nil bundle", current: onOld, server: serverOld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := agent.AcceptBundle(now, tt.current, tt.server, tt.bundle)
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, agent.ErrBundle)
			}
		})
	}
}

// TestReissue: "re-issue now?"
func TestReissue(t *testing.T) {
	now := time.Now()
	oldCA, newCA := newTestCA(t, "old"), newTestCA(t, "new")
	sameName := newTestCA(t, "old") // same subject, other key: must not pass for the old CA
	b := func(active *testCA, cas ...*testCA) *agent.Bundle {
		bb, err := agent.ParseBundle(bundleData(active, "2", cas...))
		require.NoError(t, err)
		return bb
	}
	valid := func(ca *testCA) *x509.Certificate {
		return ca.leaf(t, false, now.Add(-time.Minute), now.Add(time.Hour))
	}
	tests := []struct {
		name   string
		cert   *x509.Certificate
		bundle *agent.Bundle
		want   bool
	}{
		{name: "no bundle (stock API)", cert: valid(oldCA), want: false},
		{name: "idle, issued by the only CA", cert: valid(oldCA), bundle: b(oldCA, oldCA), want: false},
		{name: "update-clients, issued by the old CA", cert: valid(oldCA), bundle: b(newCA, newCA, oldCA), want: true},
		{name: "update-clients, issued by the new CA", cert: valid(newCA), bundle: b(newCA, newCA, oldCA), want: false},
		{name: "rollback, issued by the new CA", cert: valid(newCA), bundle: b(oldCA, newCA, oldCA), want: true},
		{name: "rollback, issued by the old CA", cert: valid(oldCA), bundle: b(oldCA, newCA, oldCA), want: false},
		{name: "same issuer name, other key", cert: valid(sameName), bundle: b(oldCA, oldCA), want: true},
		{name: "expired: bootstrap, not re-issue", cert: oldCA.leaf(t, false, now.Add(-2*time.Hour), now.Add(-time.Hour)), bundle: b(newCA, newCA, oldCA), want: false},
		{name: "no certificate", bundle: b(newCA, newCA, oldCA), want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, agent.Reissue(now, tt.cert, tt.bundle), "Reissue")
		})
	}
}
