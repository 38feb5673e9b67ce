package certstore

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"

	"gopkg.in/yaml.v3"

	"github.com/nodetrust/nodetrust/internal/atomicfile"
)

// Names inside generated kubeconfigs, as the kubelet's own bootstrap
// writes them.
const (
	kubeconfigCluster = "default-cluster"
	kubeconfigUser    = "default-auth"
	kubeconfigContext = "default-context"
)

// Kubeconfig is a kubeconfig for a client, such as the kubelet, that
// authenticates with a certificate and key on disk.
type Kubeconfig struct {
	// Server is the API server's https URL.
	Server string
	// CAPEM, when set, is embedded as certificate-authority-data.
	CAPEM []byte
	// CAFile is referenced as certificate-authority when CAPEM is empty.
	// With neither, the system roots are used.
	CAFile string
	// CertPath and KeyPath are client-certificate and client-key:
	// normally both Store.CurrentPath(), so that rotations need no
	// rewrite.
	CertPath, KeyPath string
}

type kcFile struct {
	APIVersion     string      `yaml:"apiVersion"`
	Kind           string      `yaml:"kind"`
	Clusters       []kcCluster `yaml:"clusters"`
	Contexts       []kcContext `yaml:"contexts"`
	CurrentContext string      `yaml:"current-context"`
	Users          []kcUser    `yaml:"users"`
}

type kcCluster struct {
	Name    string `yaml:"name"`
	Cluster struct {
		Server                   string `yaml:"server"`
		CertificateAuthority     string `yaml:"certificate-authority,omitempty"`
		CertificateAuthorityData string `yaml:"certificate-authority-data,omitempty"`
	} `yaml:"cluster"`
}

type kcContext struct {
	Name    string `yaml:"name"`
	Context struct {
		Cluster string `yaml:"cluster"`
		User    string `yaml:"user"`
	} `yaml:"context"`
}

type kcUser struct {
	Name string `yaml:"name"`
	User struct {
		ClientCertificate string `yaml:"client-certificate"`
		ClientKey         string `yaml:"client-key"`
	} `yaml:"user"`
}

// Marshal validates k and renders it as kubeconfig YAML.
func (k Kubeconfig) Marshal() ([]byte, error) {
	u, err := url.Parse(k.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("kubeconfig server %q: want an https URL", k.Server)
	}
	if k.CertPath == "" || k.KeyPath == "" {
		return nil, errors.New("kubeconfig: certificate and key paths are required")
	}
	var c kcCluster
	c.Name = kubeconfigCluster
	c.Cluster.Server = k.Server
	if len(k.CAPEM) > 0 {
		ca, err := canonicalCerts(k.CAPEM)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig CA: %w", err)
		}
		c.Cluster.CertificateAuthorityData = base64.StdEncoding.EncodeToString(ca)
	} else {
		c.Cluster.CertificateAuthority = k.CAFile
	}
	var x kcContext
	x.Name = kubeconfigContext
	x.Context.Cluster = kubeconfigCluster
	x.Context.User = kubeconfigUser
	var us kcUser
	us.Name = kubeconfigUser
	us.User.ClientCertificate = k.CertPath
	us.User.ClientKey = k.KeyPath
	return yaml.Marshal(kcFile{
		APIVersion:     "v1",
		Kind:           "Config",
		Clusters:       []kcCluster{c},
		Contexts:       []kcContext{x},
		CurrentContext: kubeconfigContext,
		Users:          []kcUser{us},
	})
}

// Write writes k to path crash-safely with mode 0600.
func (k Kubeconfig) Write(path string) error {
	b, err := k.Marshal()
	if err != nil {
		return fmt.Errorf("certstore: %s: %w", path, err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("certstore: %w", err)
	}
	return nil
}

// WriteKubeconfig writes, crash-safely and with mode 0600, a kubeconfig
// for server that embeds caPEM (or, when caPEM is empty, uses the system
// roots) and names certPath and keyPath, normally both Store.CurrentPath().
// To reference a CA file instead, use Kubeconfig.Write.
func WriteKubeconfig(path, server string, caPEM []byte, certPath, keyPath string) error {
	return Kubeconfig{Server: server, CAPEM: caPEM, CertPath: certPath, KeyPath: keyPath}.Write(path)
}

// WriteCABundle writes the certificates of caPEM, crash-safely and with
// mode 0644 (a CA bundle is public), to path. caPEM must hold at least one
// certificate and nothing but certificates.
func WriteCABundle(path string, caPEM []byte) error {
	b, err := canonicalCerts(caPEM)
	if err != nil {
		return fmt.Errorf("certstore: CA bundle for %s: %w", path, err)
	}
	if err := atomicfile.Write(path, b, 0o644); err != nil {
		return fmt.Errorf("certstore: %w", err)
	}
	return nil
}

// canonicalCerts re-encodes the certificates of b, which must all parse.
func canonicalCerts(b []byte) ([]byte, error) {
	var out bytes.Buffer
	for n := 1; ; n++ {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %s, want CERTIFICATE", n, blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: blk.Bytes})
	}
	if out.Len() == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out.Bytes(), nil
}
