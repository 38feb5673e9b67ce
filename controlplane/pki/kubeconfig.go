package pki

import (
	"encoding/base64"
	"fmt"

	"gopkg.in/yaml.v3"
)

// Credentials is what a kubeconfig user authenticates with: a client
// certificate and key (PEM), or a bearer token.
type Credentials struct {
	CertPEM []byte
	KeyPEM  []byte
	Token   string
}

// Kubeconfig returns a kubeconfig with one cluster, user and context,
// named name, that trusts caPEM for server.
func Kubeconfig(name, server string, caPEM []byte, user string, creds Credentials) ([]byte, error) {
	u := map[string]any{}
	if creds.Token != "" {
		u["token"] = creds.Token
	}
	if len(creds.CertPEM) > 0 {
		u["client-certificate-data"] = base64.StdEncoding.EncodeToString(creds.CertPEM)
		u["client-key-data"] = base64.StdEncoding.EncodeToString(creds.KeyPEM)
	}
	cfg := map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []any{map[string]any{
			"name":    name,
			"cluster": map[string]any{"server": server, "certificate-authority-data": base64.StdEncoding.EncodeToString(caPEM)},
		}},
		"users": []any{map[string]any{"name": user, "user": u}},
		"contexts": []any{map[string]any{
			"name":    user + "@" + name,
			"context": map[string]any{"cluster": name, "user": user},
		}},
		"current-context": user + "@" + name,
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode kubeconfig: %w", err)
	}
	return b, nil
}
