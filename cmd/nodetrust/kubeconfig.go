package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"
)

// adminConfig is what the admin commands need from a kubeconfig: the API
// URL and the TLS client (CA, client certificate). It reads the common
// kubeconfig shape (current-context, or the first context) with inline
// *-data fields or file paths relative to the kubeconfig, which keeps
// k8s.io/client-go out of the shipped binary.
type adminConfig struct {
	Host   string
	Client *http.Client
}

type kubeconfigFile struct {
	CurrentContext string `yaml:"current-context"`
	Contexts       []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
	Clusters []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server                   string `yaml:"server"`
			CertificateAuthority     string `yaml:"certificate-authority"`
			CertificateAuthorityData string `yaml:"certificate-authority-data"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		Name string `yaml:"name"`
		User struct {
			ClientCertificate     string `yaml:"client-certificate"`
			ClientCertificateData string `yaml:"client-certificate-data"`
			ClientKey             string `yaml:"client-key"`
			ClientKeyData         string `yaml:"client-key-data"`
			Token                 string `yaml:"token"`
		} `yaml:"user"`
	} `yaml:"users"`
}

// loadAdminConfig reads a kubeconfig; errors name the file and the field.
func loadAdminConfig(path string) (*adminConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	var kc kubeconfigFile
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf("kubeconfig %s: %s", path, fmt.Sprintf(format, a...))
	}
	if len(kc.Contexts) == 0 {
		return nil, bad("no contexts")
	}
	ctx := kc.Contexts[0].Context
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			ctx = c.Context
		}
	}
	dir := filepath.Dir(path)
	read := func(data, file, field string) ([]byte, error) {
		if data != "" {
			d, err := base64.StdEncoding.DecodeString(data)
			if err != nil {
				return nil, bad("%s-data is not base64", field)
			}
			return d, nil
		}
		if file == "" {
			return nil, nil
		}
		if !filepath.IsAbs(file) {
			file = filepath.Join(dir, file)
		}
		d, err := os.ReadFile(file)
		if err != nil {
			return nil, bad("%s: %v", field, err)
		}
		return d, nil
	}
	cfg := &adminConfig{}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	found := false
	for _, c := range kc.Clusters {
		if c.Name != ctx.Cluster {
			continue
		}
		found = true
		cfg.Host = c.Cluster.Server
		ca, err := read(c.Cluster.CertificateAuthorityData, c.Cluster.CertificateAuthority, "certificate-authority")
		if err != nil {
			return nil, err
		}
		if ca != nil {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(ca) {
				return nil, bad("certificate-authority holds no certificate")
			}
			tlsCfg.RootCAs = pool
		}
	}
	if !found || cfg.Host == "" {
		return nil, bad("cluster %q with a server not found", ctx.Cluster)
	}
	var token string
	for _, u := range kc.Users {
		if u.Name != ctx.User {
			continue
		}
		cert, err := read(u.User.ClientCertificateData, u.User.ClientCertificate, "client-certificate")
		if err != nil {
			return nil, err
		}
		key, err := read(u.User.ClientKeyData, u.User.ClientKey, "client-key")
		if err != nil {
			return nil, err
		}
		if cert != nil || key != nil {
			pair, err := tls.X509KeyPair(cert, key)
			if err != nil {
				return nil, bad("client certificate and key: %v", err)
			}
			tlsCfg.Certificates = []tls.Certificate{pair}
		}
		token = u.User.Token
	}
	var rt http.RoundTripper = &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	if token != "" {
		rt = bearer{token: token, next: rt}
	}
	cfg.Client = &http.Client{Transport: rt, Timeout: 30 * time.Second}
	return cfg, nil
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
