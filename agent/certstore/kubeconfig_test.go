package certstore_test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/nodetrust/nodetrust/agent/certstore"
)

// kubeconfig is the part of a kubeconfig the kubelet reads.
type kubeconfig struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Clusters   []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server                   string `yaml:"server"`
			CertificateAuthority     string `yaml:"certificate-authority"`
			CertificateAuthorityData string `yaml:"certificate-authority-data"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
	CurrentContext string `yaml:"current-context"`
	Users          []struct {
		Name string `yaml:"name"`
		User struct {
			ClientCertificate string `yaml:"client-certificate"`
			ClientKey         string `yaml:"client-key"`
		} `yaml:"user"`
	} `yaml:"users"`
}

func readKubeconfig(t *testing.T, path string) kubeconfig {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var kc kubeconfig
	require.NoError(t, yaml.Unmarshal(b, &kc))
	require.Equal(t, "v1", kc.APIVersion)
	require.Equal(t, "Config", kc.Kind)
	require.Len(t, kc.Clusters, 1)
	require.Len(t, kc.Contexts, 1)
	require.Len(t, kc.Users, 1)
	require.Equal(t, kc.Contexts[0].Name, kc.CurrentContext)
	require.Equal(t, kc.Clusters[0].Name, kc.Contexts[0].Context.Cluster)
	require.Equal(t, kc.Users[0].Name, kc.Contexts[0].Context.User)
	return kc
}

func TestWriteKubeconfig(t *testing.T) {
	dir := t.TempDir()
	s := &certstore.Store{Dir: filepath.Join(dir, "pki"), Prefix: "kubelet-client"}
	ca := newCA(t, "ca")
	path := filepath.Join(dir, "kubeconfig")

	require.NoError(t, certstore.WriteKubeconfig(path, "https://10.0.0.1:6443", ca.certPEM, s.CurrentPath(), s.CurrentPath()))
	kc := readKubeconfig(t, path)
	require.Equal(t, "https://10.0.0.1:6443", kc.Clusters[0].Cluster.Server)
	ca64, err := base64.StdEncoding.DecodeString(kc.Clusters[0].Cluster.CertificateAuthorityData)
	require.NoError(t, err)
	require.Equal(t, ca.certPEM, ca64)
	require.Empty(t, kc.Clusters[0].Cluster.CertificateAuthority)
	require.Equal(t, filepath.Join(dir, "pki", "kubelet-client-current.pem"), kc.Users[0].User.ClientCertificate)
	require.Equal(t, kc.Users[0].User.ClientCertificate, kc.Users[0].User.ClientKey)

	// Rewriting replaces it; a CA file is referenced instead.
	require.NoError(t, certstore.Kubeconfig{
		Server: "https://cp.example:443", CAFile: "/etc/nodetrust/ca.crt",
		CertPath: s.CurrentPath(), KeyPath: s.CurrentPath(),
	}.Write(path))
	kc = readKubeconfig(t, path)
	require.Equal(t, "https://cp.example:443", kc.Clusters[0].Cluster.Server)
	require.Equal(t, "/etc/nodetrust/ca.crt", kc.Clusters[0].Cluster.CertificateAuthority)
	require.Empty(t, kc.Clusters[0].Cluster.CertificateAuthorityData)
}

func TestWriteKubeconfigRefuses(t *testing.T) {
	ca := newCA(t, "ca")
	path := filepath.Join(t.TempDir(), "kubeconfig")
	for _, tt := range []struct {
		name, server string
		ca           []byte
		cert         string
		errText      string
	}{
		{"http server", "http://10.0.0.1", ca.certPEM, "/c", "https URL"},
		{"no server", "", ca.certPEM, "/c", "https URL"},
		{"bad CA", "https://10.0.0.1", ca.keyPEM, "/c", "want CERTIFICATE"},
		{"no cert path", "https://10.0.0.1", ca.certPEM, "", "paths are required"},
	} {
		err := certstore.WriteKubeconfig(path, tt.server, tt.ca, tt.cert, tt.cert)
		require.ErrorContains(t, err, tt.errText, tt.name)
		require.ErrorContains(t, err, path, tt.name)
		require.NoFileExists(t, path)
	}
}

func TestWriteCABundle(t *testing.T) {
	dir := t.TempDir()
	a, b := newCA(t, "a"), newCA(t, "b")
	path := filepath.Join(dir, "ca.crt")
	require.NoError(t, certstore.WriteCABundle(path, append([]byte("# comment\n"), append(a.certPEM, b.certPEM...)...)))
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, append(a.certPEM, b.certPEM...), got)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())

	require.ErrorContains(t, certstore.WriteCABundle(path, nil), "no PEM certificate")
	require.ErrorContains(t, certstore.WriteCABundle(path, a.keyPEM), "want CERTIFICATE")
	got2, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, got, got2, "refused bundle leaves the old one")
}
