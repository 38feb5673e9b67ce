package certstore_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent/certstore"
	"github.com/nodetrust/nodetrust/internal/clock"
)

func newStore(t *testing.T, dir string) (*certstore.Store, *clock.Fake, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	clk := clock.NewFake(epoch)
	return &certstore.Store{
		Dir:    dir,
		Prefix: "kubelet-client",
		Clock:  clk,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}, clk, &logs
}

// datedFiles lists the dated files of prefix in dir, sorted.
func datedFiles(t *testing.T, dir, prefix string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d(-\d+)?\.pem$`)
	var out []string
	for _, e := range ents {
		if re.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out
}

func TestUpdateAndCurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	s, _, logs := newStore(t, dir)
	ca := newCA(t, "ca")

	_, err := s.Current()
	require.ErrorIs(t, err, certstore.ErrNoCredential)

	cert, key := ca.issue(t, 42)
	p, err := s.Update(cert, key, nil)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "kubelet-client-2030-01-02-03-04-05.pem"), p.Path)
	require.Equal(t, cert, p.CertPEM)
	require.Equal(t, key, p.KeyPEM)

	fi, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	fi, err = os.Stat(p.Path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	b, err := os.ReadFile(p.Path)
	require.NoError(t, err)
	require.Equal(t, append(append([]byte{}, cert...), key...), b, "cert chain, then key")

	link := s.CurrentPath()
	require.Equal(t, filepath.Join(dir, "kubelet-client-current.pem"), link)
	target, err := os.Readlink(link)
	require.NoError(t, err)
	require.Equal(t, "kubelet-client-2030-01-02-03-04-05.pem", target, "relative link")

	got, err := s.Current()
	require.NoError(t, err)
	require.Equal(t, int64(42), got.Cert.SerialNumber.Int64())
	require.Equal(t, p.Path, got.Path)
	require.Len(t, got.Chain, 1)
	require.Same(t, got.Cert, got.TLS.Leaf)
	require.True(t, keyMatches(got.Cert, got.Key))

	require.NotContains(t, logs.String(), "PRIVATE KEY")
}

func TestUpdateVerifiesChain(t *testing.T) {
	dir := t.TempDir()
	s, clk, _ := newStore(t, dir)
	root := newCA(t, "root")
	inter := root.intermediate(t, "intermediate")
	roots := x509.NewCertPool()
	roots.AddCert(root.cert)

	cert, key := inter.issue(t, 1)
	p, err := s.Update(append(cert, inter.certPEM...), key, roots)
	require.NoError(t, err)
	require.Len(t, p.Chain, 2)

	// Without the intermediate, or against other roots: refused, old kept.
	clk.Advance(time.Second)
	cert2, key2 := inter.issue(t, 2)
	_, err = s.Update(cert2, key2, roots)
	require.ErrorIs(t, err, certstore.ErrBadPair)
	other := x509.NewCertPool()
	other.AddCert(newCA(t, "other").cert)
	_, err = s.Update(append(cert2, inter.certPEM...), key2, other)
	require.ErrorIs(t, err, certstore.ErrBadPair)
	require.Contains(t, err.Error(), "does not chain")

	got, err := s.Current()
	require.NoError(t, err)
	require.Equal(t, int64(1), got.Cert.SerialNumber.Int64())
	require.Len(t, datedFiles(t, dir, "kubelet-client"), 1)
}

func TestUpdateRefusesBadPairs(t *testing.T) {
	ca := newCA(t, "ca")
	cert, key := ca.issue(t, 1)
	_, otherKey := ca.issue(t, 2)
	tests := []struct {
		name      string
		cert, key []byte
		errText   string
	}{
		{"mismatched key", cert, otherKey, "does not match"},
		{"no certificate", nil, key, "no PEM certificate"},
		{"key in certificate", append(append([]byte{}, cert...), key...), key, "want CERTIFICATE"},
		{"garbage certificate", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), key, "certificate PEM block 1"},
		{"truncated certificate", cert[:len(cert)-40], key, "trailing data"},
		{"no key", cert, nil, "key: no PEM block"},
		{"two keys", cert, append(append([]byte{}, key...), otherKey...), "more than one"},
		{"garbage key", cert, []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"), "does not parse"},
		{"certificate as key", cert, cert, "want PRIVATE KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s, clk, _ := newStore(t, dir)
			good, goodKey := ca.issue(t, 7)
			_, err := s.Update(good, goodKey, nil)
			require.NoError(t, err)
			clk.Advance(time.Second)

			_, err = s.Update(tt.cert, tt.key, nil)
			require.ErrorIs(t, err, certstore.ErrBadPair)
			require.Contains(t, err.Error(), tt.errText)

			got, err := s.Current()
			require.NoError(t, err)
			require.Equal(t, int64(7), got.Cert.SerialNumber.Int64(), "old pair kept")
			require.Len(t, datedFiles(t, dir, "kubelet-client"), 1, "nothing written")
		})
	}
}

func TestCurrentBroken(t *testing.T) {
	ca := newCA(t, "ca")
	cert, key := ca.issue(t, 1)
	_, otherKey := ca.issue(t, 2)
	const dated = "kubelet-client-2030-01-01-00-00-00.pem"
	join := func(b ...[]byte) []byte { return bytes.Join(b, nil) }
	whole := join(cert, key)
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) // leaves a broken credential
		errText string
		err     error // besides ErrCorrupt
	}{
		{"garbage", writeDated(dated, []byte("not a credential\n"), 0o600), "no PEM block", nil},
		{"empty", writeDated(dated, nil, 0o600), "empty file", nil},
		{"truncated in the key", writeDated(dated, whole[:len(whole)-30], 0o600), "truncated", nil},
		{"truncated after the certificate", writeDated(dated, whole[:len(cert)+10], 0o600), "truncated", nil},
		{"certificate only", writeDated(dated, cert, 0o600), "no private key", nil},
		{"key only", writeDated(dated, key, 0o600), "no certificate", nil},
		{"key not matching", writeDated(dated, join(cert, otherKey), 0o600), "does not match", nil},
		{"block after the key", writeDated(dated, join(cert, key, cert), 0o600), "after the key", nil},
		{"group-readable", writeDated(dated, whole, 0o640), "mode 0640", certstore.ErrInsecureMode},
		{"world-readable", writeDated(dated, whole, 0o644), "mode 0644", certstore.ErrInsecureMode},
		{"dangling link", func(t *testing.T, dir string) {
			require.NoError(t, os.Symlink(dated, filepath.Join(dir, "kubelet-client-current.pem")))
		}, "does not exist", nil},
		{"link to a folder", func(t *testing.T, dir string) {
			require.NoError(t, os.Mkdir(filepath.Join(dir, dated), 0o700))
			require.NoError(t, os.Symlink(dated, filepath.Join(dir, "kubelet-client-current.pem")))
		}, "not a regular file", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.setup(t, dir)
			s, _, _ := newStore(t, dir)
			p, err := s.Current()
			require.Nil(t, p)
			require.ErrorIs(t, err, certstore.ErrCorrupt)
			require.Contains(t, err.Error(), filepath.Join(dir, dated), "error names the file")
			require.Contains(t, err.Error(), tt.errText)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
			}
			require.NotContains(t, err.Error(), "PRIVATE KEY-----")

			// An Update repairs the store.
			_, err = s.Update(cert, key, nil)
			require.NoError(t, err)
			_, err = s.Current()
			require.NoError(t, err)
		})
	}
}

// writeDated writes a dated file with mode and points the current link at it.
func writeDated(name string, b []byte, mode os.FileMode) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, mode))
		require.NoError(t, os.Chmod(p, mode))
		require.NoError(t, os.Symlink(name, filepath.Join(dir, "kubelet-client-current.pem")))
	}
}

func TestCurrentPlainFile(t *testing.T) {
	// A current file that is not a link (copied in by hand) still loads.
	dir := t.TempDir()
	s, _, _ := newStore(t, dir)
	cert, key := newCA(t, "ca").issue(t, 5)
	require.NoError(t, os.WriteFile(s.CurrentPath(), append(cert, key...), 0o600))
	p, err := s.Current()
	require.NoError(t, err)
	require.Equal(t, s.CurrentPath(), p.Path)
}

func TestSameSecondUpdatesNeverOverwrite(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := newStore(t, dir)
	s.Keep = 10
	ca := newCA(t, "ca")
	var paths []string
	contents := map[string][]byte{}
	for i := int64(1); i <= 4; i++ { // the fake clock never moves
		cert, key := ca.issue(t, i)
		p, err := s.Update(cert, key, nil)
		require.NoError(t, err)
		require.NotContains(t, paths, p.Path)
		paths = append(paths, p.Path)
		contents[p.Path] = append(cert, key...)
		got, err := s.Current()
		require.NoError(t, err)
		require.Equal(t, i, got.Cert.SerialNumber.Int64())
	}
	require.Equal(t, []string{
		filepath.Join(dir, "kubelet-client-2030-01-02-03-04-05.pem"),
		filepath.Join(dir, "kubelet-client-2030-01-02-03-04-05-1.pem"),
		filepath.Join(dir, "kubelet-client-2030-01-02-03-04-05-2.pem"),
		filepath.Join(dir, "kubelet-client-2030-01-02-03-04-05-3.pem"),
	}, paths)
	for p, want := range contents {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		require.Equal(t, want, b, "%s overwritten", p)
	}
}

func TestPruneKeepsLastN(t *testing.T) {
	ca := newCA(t, "ca")
	for _, tt := range []struct {
		keep, want int
	}{{0, certstore.DefaultKeep}, {1, 1}, {2, 2}, {-1, 0}} {
		dir := t.TempDir()
		s, clk, _ := newStore(t, dir)
		s.Keep = tt.keep
		// Leftovers of a write a crash cut short, and another prefix's files.
		require.NoError(t, os.WriteFile(filepath.Join(dir, ".kubelet-client-2030-01-01-00-00-00.pem.tmp123"), []byte("x"), 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "kubelet-server-2020-01-01-00-00-00.pem"), []byte("x"), 0o600))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "kubelet-client-pending.key"), []byte("x"), 0o600))
		var names []string
		for i := int64(1); i <= 6; i++ {
			cert, key := ca.issue(t, i)
			p, err := s.Update(cert, key, nil)
			require.NoError(t, err)
			names = append(names, filepath.Base(p.Path))
			clk.Advance(time.Minute)
		}
		require.Equal(t, names[len(names)-1-tt.want:], datedFiles(t, dir, "kubelet-client"), "keep %d", tt.keep)
		require.NoFileExists(t, filepath.Join(dir, ".kubelet-client-2030-01-01-00-00-00.pem.tmp123"))
		require.FileExists(t, filepath.Join(dir, "kubelet-server-2020-01-01-00-00-00.pem"))
		require.FileExists(t, filepath.Join(dir, "kubelet-client-pending.key"))
	}
}

func TestPruneNeverRemovesCurrent(t *testing.T) {
	// The clock jumps back: the new current file has the oldest name.
	dir := t.TempDir()
	s, clk, _ := newStore(t, dir)
	s.Keep = 1
	ca := newCA(t, "ca")
	for i := int64(1); i <= 3; i++ {
		cert, key := ca.issue(t, i)
		_, err := s.Update(cert, key, nil)
		require.NoError(t, err)
		clk.Advance(time.Hour)
	}
	clk.Set(epoch.Add(-24 * time.Hour))
	cert, key := ca.issue(t, 4)
	p, err := s.Update(cert, key, nil)
	require.NoError(t, err)
	got, err := s.Current()
	require.NoError(t, err)
	require.Equal(t, int64(4), got.Cert.SerialNumber.Int64())
	require.Equal(t, p.Path, got.Path)
	require.Len(t, datedFiles(t, dir, "kubelet-client"), 2)
}

func TestPrefixesAreSeparate(t *testing.T) {
	dir := t.TempDir()
	client, _, _ := newStore(t, dir)
	server, _, _ := newStore(t, dir)
	server.Prefix = "kubelet-server"
	server.Keep = -1
	ca := newCA(t, "ca")
	c1, k1 := ca.issue(t, 1)
	_, err := client.Update(c1, k1, nil)
	require.NoError(t, err)
	_, err = server.Current()
	require.ErrorIs(t, err, certstore.ErrNoCredential)
	c2, k2 := ca.issue(t, 2)
	_, err = server.Update(c2, k2, nil)
	require.NoError(t, err)
	got, err := client.Current()
	require.NoError(t, err)
	require.Equal(t, int64(1), got.Cert.SerialNumber.Int64())
}

func TestStoreNeedsDirAndPrefix(t *testing.T) {
	for _, s := range []*certstore.Store{{Prefix: "x"}, {Dir: t.TempDir()}, {Dir: t.TempDir(), Prefix: "a/b"}} {
		_, err := s.Current()
		require.Error(t, err)
		_, err = s.PendingKey()
		require.Error(t, err)
	}
}

func TestPendingKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	s1, _, _ := newStore(t, dir)
	k1, err := s1.PendingKey()
	require.NoError(t, err)
	path := filepath.Join(dir, "kubelet-client-pending.key")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// A new Store (a restart) gets the same key.
	s2, _, _ := newStore(t, dir)
	k2, err := s2.PendingKey()
	require.NoError(t, err)
	require.True(t, samePub(k1, k2))

	// Discarded: the next one is new.
	require.NoError(t, s2.DiscardPendingKey())
	require.NoFileExists(t, path)
	require.NoError(t, s2.DiscardPendingKey(), "discarding nothing is fine")
	k3, err := s2.PendingKey()
	require.NoError(t, err)
	require.False(t, samePub(k1, k3))

	// Readable by others, or garbage: replaced.
	require.NoError(t, os.Chmod(path, 0o644))
	k4, err := s2.PendingKey()
	require.NoError(t, err)
	require.False(t, samePub(k3, k4))
	fi, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	require.NoError(t, os.WriteFile(path, []byte("garbage"), 0o600))
	k5, err := s2.PendingKey()
	require.NoError(t, err)
	require.NotNil(t, k5)
	k6, err := s1.PendingKey()
	require.NoError(t, err)
	require.True(t, samePub(k5, k6))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(b), "-----BEGIN PRIVATE KEY-----"))
}

func samePub(a, b crypto.Signer) bool {
	return a.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(b.Public())
}

func TestUpdateDropsItsPendingKey(t *testing.T) {
	dir := t.TempDir()
	s, _, _ := newStore(t, dir)
	ca := newCA(t, "ca")
	pending, err := s.PendingKey()
	require.NoError(t, err)
	path := filepath.Join(dir, "kubelet-client-pending.key")

	// Another key's certificate: the pending request is still open.
	cert, key := ca.issue(t, 1)
	_, err = s.Update(cert, key, nil)
	require.NoError(t, err)
	require.FileExists(t, path)

	// The pending key's certificate: the request is done.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "n"},
		NotBefore: epoch, NotAfter: epoch.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pending.Public(), ca.key)
	require.NoError(t, err)
	pk, err := x509.MarshalPKCS8PrivateKey(pending)
	require.NoError(t, err)
	_, err = s.Update(certPEM(der), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), nil)
	require.NoError(t, err)
	require.NoFileExists(t, path)
	got, err := s.Current()
	require.NoError(t, err)
	require.True(t, samePub(got.Key, pending))
}
