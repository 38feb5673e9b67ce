package bootstrap_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// testPKI is a CA and a client certificate it signed.
type testPKI struct {
	caCert         *x509.Certificate
	caPEM          []byte
	certPEM        []byte
	keyPEM         []byte
	otherKeyPEM    []byte // a key that does not match certPEM
	leafOnlyCAFile []byte // a bundle with no CA certificate
}

func newPKI(t *testing.T, cn string) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn + "-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, key.Public(), caKey)
	require.NoError(t, err)
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)

	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})
	return &testPKI{
		caCert:         caCert,
		caPEM:          pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM:        certPEM,
		keyPEM:         ecKeyPEM(t, key),
		otherKeyPEM:    ecKeyPEM(t, other),
		leafOnlyCAFile: certPEM,
	}
}

func ecKeyPEM(t *testing.T, k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(k)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// kubeEnv renders a kube-env YAML map.
func kubeEnv(kv ...string) string {
	var sb strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&sb, "%s: %q\n", kv[i], kv[i+1])
	}
	return sb.String()
}

// startMetadata runs nodetrust's metadata server in-process with one
// instance whose host view 127.0.0.1 gets, and returns its address.
func startMetadata(t *testing.T, attrs map[string]string) string {
	t.Helper()
	d := &metadata.Data{Instances: []metadata.Instance{{
		Name:          "node-1",
		HostAddresses: []string{"127.0.0.1"},
		Attributes:    attrs,
	}}}
	srv, err := metadata.NewServer(metadata.Config{}, d)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return ln.Addr().String()
}

// deadHost returns an address where nothing listens.
func deadHost(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

const (
	goodToken  = "k3x9aa.q7w2e5r8t1y4u6i0"
	goodSecret = "q7w2e5r8t1y4u6i0"
	envToken   = "zz0011.m4n5b6v7c8x9z0a1"
	envSecret  = "m4n5b6v7c8x9z0a1"
)

func TestFetch(t *testing.T) {
	p := newPKI(t, "kubelet")
	other := newPKI(t, "other")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(caFile, other.caPEM, 0o644))
	leafCAFile := filepath.Join(dir, "leaf.crt")
	require.NoError(t, os.WriteFile(leafCAFile, p.leafOnlyCAFile, 0o644))

	// Strings that must never appear in an error, String() or a log line.
	keyBody := func(k []byte) string {
		blk, _ := pem.Decode(k)
		return base64.StdEncoding.EncodeToString(blk.Bytes)[8:48]
	}
	secrets := []string{
		goodSecret, envSecret, "Q7W2E5R8T1Y4U6I0", "q7w2e5r8t1y4u6",
		keyBody(p.keyPEM), keyBody(p.otherKeyPEM), b64(p.keyPEM)[20:60], b64(p.otherKeyPEM)[20:60],
	}

	type want struct {
		token    string
		cert     bool
		ca       []byte // PEM of the expected CA certificate
		source   string
		caSource string
		err      error  // errors.Is target; nil means success
		errText  string // must appear in the error
	}
	tests := []struct {
		name   string
		attrs  map[string]string // nil: metadata server down
		caFile string
		pin    string
		want   want
	}{
		{
			name:  "token attribute, CA from kube-env",
			attrs: map[string]string{"nodetrust-bootstrap-token": goodToken + "\n", "kube-env": kubeEnv("CA_CERT", b64(p.caPEM))},
			want: want{token: goodToken, ca: p.caPEM, source: "instance/attributes/nodetrust-bootstrap-token",
				caSource: "instance/attributes/kube-env CA_CERT"},
		},
		{
			name: "token attribute wins over kube-env token",
			attrs: map[string]string{"nodetrust-bootstrap-token": goodToken,
				"kube-env": kubeEnv("KUBELET_BOOTSTRAP_TOKEN", envToken, "CA_CERT", b64(p.caPEM))},
			want: want{token: goodToken, ca: p.caPEM, source: "instance/attributes/nodetrust-bootstrap-token"},
		},
		{
			name: "empty token attribute falls through to kube-env token",
			attrs: map[string]string{"nodetrust-bootstrap-token": " \n",
				"kube-env": kubeEnv("KUBELET_BOOTSTRAP_TOKEN", envToken, "CA_CERT", b64(p.caPEM))},
			want: want{token: envToken, ca: p.caPEM, source: "instance/attributes/kube-env KUBELET_BOOTSTRAP_TOKEN"},
		},
		{
			name:  "kube-env token",
			attrs: map[string]string{"kube-env": kubeEnv("KUBERNETES_MASTER_NAME", "master", "KUBELET_BOOTSTRAP_TOKEN", envToken, "CA_CERT", b64(p.caPEM))},
			want:  want{token: envToken, ca: p.caPEM, source: "instance/attributes/kube-env KUBELET_BOOTSTRAP_TOKEN"},
		},
		{
			name:  "kube-env cert and key",
			attrs: map[string]string{"kube-env": kubeEnv("KUBELET_CERT", b64(p.certPEM), "KUBELET_KEY", b64(p.keyPEM), "CA_CERT", b64(p.caPEM))},
			want: want{cert: true, ca: p.caPEM, source: "instance/attributes/kube-env KUBELET_CERT+KUBELET_KEY",
				caSource: "instance/attributes/kube-env CA_CERT"},
		},
		{
			name:   "CA file preferred over kube-env CA_CERT",
			attrs:  map[string]string{"nodetrust-bootstrap-token": goodToken, "kube-env": kubeEnv("CA_CERT", b64(p.caPEM))},
			caFile: caFile,
			want:   want{token: goodToken, ca: other.caPEM, caSource: caFile},
		},
		{
			name:   "CA file when kube-env is undefined",
			attrs:  map[string]string{"nodetrust-bootstrap-token": goodToken},
			caFile: caFile,
			want:   want{token: goodToken, ca: other.caPEM, caSource: caFile},
		},
		{
			name:  "no CA anywhere",
			attrs: map[string]string{"nodetrust-bootstrap-token": goodToken},
			want:  want{err: bootstrap.ErrNoCA, errText: "CA_CERT"},
		},
		{
			name:   "CA file without a CA certificate",
			attrs:  map[string]string{"nodetrust-bootstrap-token": goodToken},
			caFile: leafCAFile,
			want:   want{err: bootstrap.ErrBadCredential, errText: leafCAFile},
		},
		{
			name:   "CA file missing",
			attrs:  map[string]string{"nodetrust-bootstrap-token": goodToken},
			caFile: filepath.Join(dir, "missing.crt"),
			want:   want{errText: "missing.crt"},
		},
		{
			name:  "pin matches kube-env CA",
			attrs: map[string]string{"nodetrust-bootstrap-token": goodToken, "kube-env": kubeEnv("CA_CERT", b64(append(other.caPEM, p.caPEM...)))},
			pin:   bootstrap.SPKIPin(p.caCert),
			want:  want{token: goodToken},
		},
		{
			name:   "pin matches CA file",
			attrs:  map[string]string{"nodetrust-bootstrap-token": goodToken},
			caFile: caFile,
			pin:    strings.ToUpper(bootstrap.SPKIPin(other.caCert)),
			want:   want{token: goodToken, ca: other.caPEM},
		},
		{
			name:  "pin mismatch",
			attrs: map[string]string{"nodetrust-bootstrap-token": goodToken, "kube-env": kubeEnv("CA_CERT", b64(other.caPEM))},
			pin:   bootstrap.SPKIPin(p.caCert),
			want:  want{err: bootstrap.ErrPinMismatch, errText: "kube-env CA_CERT"},
		},
		{
			name:  "pin malformed",
			attrs: map[string]string{"nodetrust-bootstrap-token": goodToken, "kube-env": kubeEnv("CA_CERT", b64(p.caPEM))},
			pin:   "sha1:abcd",
			want:  want{err: bootstrap.ErrInvalidConfig, errText: "CAPin"},
		},
		{
			name:  "malformed token attribute",
			attrs: map[string]string{"nodetrust-bootstrap-token": "K3X9AA.Q7W2E5R8T1Y4U6I0", "kube-env": kubeEnv("KUBELET_BOOTSTRAP_TOKEN", envToken, "CA_CERT", b64(p.caPEM))},
			want:  want{err: bootstrap.ErrBadCredential, errText: "instance/attributes/nodetrust-bootstrap-token"},
		},
		{
			name:  "malformed kube-env token",
			attrs: map[string]string{"kube-env": kubeEnv("KUBELET_BOOTSTRAP_TOKEN", "k3x9aa.q7w2e5r8t1y4u6", "CA_CERT", b64(p.caPEM))},
			want:  want{err: bootstrap.ErrBadCredential, errText: "KUBELET_BOOTSTRAP_TOKEN"},
		},
		{
			name:  "mismatched cert and key",
			attrs: map[string]string{"kube-env": kubeEnv("KUBELET_CERT", b64(p.certPEM), "KUBELET_KEY", b64(p.otherKeyPEM), "CA_CERT", b64(p.caPEM))},
			want:  want{err: bootstrap.ErrBadCredential, errText: "KUBELET_KEY does not match"},
		},
		{
			name:  "cert without key",
			attrs: map[string]string{"kube-env": kubeEnv("KUBELET_CERT", b64(p.certPEM), "CA_CERT", b64(p.caPEM))},
			want:  want{err: bootstrap.ErrBadCredential, errText: "no KUBELET_KEY"},
		},
		{
			name:  "key not base64",
			attrs: map[string]string{"kube-env": kubeEnv("KUBELET_CERT", b64(p.certPEM), "KUBELET_KEY", "!!"+b64(p.keyPEM), "CA_CERT", b64(p.caPEM))},
			want:  want{err: bootstrap.ErrBadCredential, errText: "KUBELET_KEY: malformed bootstrap credential: not base64"},
		},
		{
			name:  "key garbage",
			attrs: map[string]string{"kube-env": kubeEnv("KUBELET_CERT", b64(p.certPEM), "KUBELET_KEY", b64(p.keyPEM[:len(p.keyPEM)/2]), "CA_CERT", b64(p.caPEM))},
			want:  want{err: bootstrap.ErrBadCredential, errText: "KUBELET_KEY"},
		},
		{
			name:  "CA_CERT is not a CA",
			attrs: map[string]string{"kube-env": kubeEnv("KUBELET_BOOTSTRAP_TOKEN", envToken, "CA_CERT", b64(p.certPEM))},
			want:  want{err: bootstrap.ErrBadCredential, errText: "CA_CERT"},
		},
		{
			name:  "kube-env not a map",
			attrs: map[string]string{"kube-env": "- " + envToken + "\n"},
			want:  want{err: bootstrap.ErrBadCredential, errText: "kube-env"},
		},
		{
			name:  "missing everything",
			attrs: map[string]string{"cluster-location": "europe-west1"},
			want:  want{err: bootstrap.ErrNoCredential},
		},
		{
			name:  "kube-env with only a CA",
			attrs: map[string]string{"kube-env": kubeEnv("CA_CERT", b64(p.caPEM))},
			want:  want{err: bootstrap.ErrNoCredential, errText: "KUBELET_BOOTSTRAP_TOKEN"},
		},
		{
			name: "metadata server down",
			want: want{errText: "nodetrust-bootstrap-token"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			host := deadHost(t)
			if tt.attrs != nil {
				host = startMetadata(t, tt.attrs)
			}
			cfg := bootstrap.Config{
				Metadata: mdclient.New(mdclient.Config{Host: host, RetryMax: -1, Logger: log}),
				CAFile:   tt.caFile,
				CAPin:    tt.pin,
				Logger:   log,
			}
			cred, err := cfg.Fetch(context.Background())

			var shown []string
			if err != nil {
				shown = append(shown, err.Error())
			}
			if cred != nil {
				shown = append(shown, cred.String(), fmt.Sprintf("%v|%+v|%#v|%s", cred, cred, cred, cred))
				log.Info("fetched", "cred", cred)
			}
			shown = append(shown, logs.String())
			for _, s := range shown {
				for _, secret := range secrets {
					require.NotContains(t, s, secret, "secret material shown")
				}
			}

			w := tt.want
			if w.err != nil || (w.errText != "" && w.token == "" && !w.cert) {
				require.Error(t, err)
				require.Nil(t, cred)
				if w.err != nil {
					require.ErrorIs(t, err, w.err)
				}
				require.Contains(t, err.Error(), w.errText)
				return
			}
			require.NoError(t, err)
			require.Equal(t, w.token, cred.Token)
			if w.token != "" {
				id, _, _ := strings.Cut(w.token, ".")
				require.Contains(t, cred.String(), "token "+id+".<redacted>")
			}
			if w.cert {
				require.Equal(t, p.certPEM, cred.CertPEM)
				require.Equal(t, p.keyPEM, cred.KeyPEM)
				require.Contains(t, cred.String(), "CN=kubelet")
			} else {
				require.Nil(t, cred.CertPEM)
				require.Nil(t, cred.KeyPEM)
			}
			if w.ca != nil {
				require.Equal(t, w.ca, cred.CABundle)
			}
			if w.source != "" {
				require.Equal(t, w.source, cred.Source)
				require.Contains(t, cred.String(), w.source)
			}
			if w.caSource != "" {
				require.Equal(t, w.caSource, cred.CASource)
			}
			require.Contains(t, logs.String(), "bootstrap credential found")
		})
	}
}

func TestFetchWithoutClient(t *testing.T) {
	_, err := (&bootstrap.Config{}).Fetch(context.Background())
	require.ErrorIs(t, err, bootstrap.ErrInvalidConfig)
}

func TestFetchCustomAttributes(t *testing.T) {
	p := newPKI(t, "kubelet")
	host := startMetadata(t, map[string]string{
		"my-token": goodToken,
		"my-env":   kubeEnv("CA_CERT", b64(p.caPEM)),
		"kube-env": kubeEnv("KUBELET_BOOTSTRAP_TOKEN", envToken),
	})
	cfg := bootstrap.Config{
		Metadata:         mdclient.New(mdclient.Config{Host: host, RetryMax: -1}),
		TokenAttribute:   "my-token",
		KubeEnvAttribute: "my-env",
	}
	cred, err := cfg.Fetch(context.Background())
	require.NoError(t, err)
	require.Equal(t, goodToken, cred.Token)
	require.Equal(t, "instance/attributes/my-token", cred.Source)
	require.Equal(t, "instance/attributes/my-env CA_CERT", cred.CASource)
}
