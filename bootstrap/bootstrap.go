// Package bootstrap reads the node's bootstrap credential, the secret it
// trades for its first certificate, from GCE-style instance metadata: a
// kubeadm bootstrap token, or GKE's shared kubelet client certificate in
// kube-env, together with the CA bundle that authenticates the control
// plane.
//
// Nothing in this package logs, prints or returns in an error the token
// secret or the private key.
package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// Default attribute names.
const (
	DefaultTokenAttribute   = "nodetrust-bootstrap-token"
	DefaultKubeEnvAttribute = "kube-env"
)

// kube-env keys.
const (
	KubeEnvToken = "KUBELET_BOOTSTRAP_TOKEN"
	KubeEnvCert  = "KUBELET_CERT"
	KubeEnvKey   = "KUBELET_KEY"
	KubeEnvCA    = "CA_CERT"
)

// ErrNoCredential is returned by Fetch when the metadata server answered
// but holds no bootstrap credential: the token attribute is undefined or
// empty and kube-env is undefined or has neither a token nor a certificate
// and key. The operator has to provide one; the caller may retry slowly.
var ErrNoCredential = errors.New("no bootstrap credential in instance metadata")

// ErrBadCredential is returned by Fetch when a credential or CA bundle was
// found but is malformed: a token not in kubeadm format, a certificate
// that does not parse or does not match its key, a kube-env that is not a
// YAML map, a CA bundle without a CA certificate. The error names the
// attribute, kube-env key or file, never the secret.
var ErrBadCredential = errors.New("malformed bootstrap credential")

// ErrPinMismatch is returned by Fetch when Config.CAPin is set and no CA
// certificate in the bundle has that public key. The bundle may have been
// tampered with; do not use it.
var ErrPinMismatch = errors.New("no CA certificate matches the CA pin")

// ErrNoCA is returned by Fetch and CABundle when no CA bundle was found:
// Config.CAFile is empty, no nodetrust-ca-bundle attribute is on the
// instance or project, and kube-env has no CA_CERT.
var ErrNoCA = errors.New("no CA bundle for the bootstrap credential")

// ErrInvalidConfig is returned by Fetch when the Config itself is unusable:
// no metadata client, or a CAPin not of the form sha256:<64 hex digits>.
var ErrInvalidConfig = errors.New("invalid bootstrap configuration")

// Config says where the node's bootstrap credential is. Only Metadata is
// required.
//
// Errors from Fetch other than ErrNoCredential, ErrBadCredential,
// ErrPinMismatch, ErrNoCA and ErrInvalidConfig (a metadata server that is
// down, a 5xx, a cancelled context, an unreadable CAFile) are transient:
// the caller retries with backoff.
type Config struct {
	// Metadata reads the instance metadata. Required.
	Metadata *mdclient.Client

	// TokenAttribute is the instance attribute holding a bootstrap token
	// ("abcdef.0123456789abcdef"). Empty means DefaultTokenAttribute.
	TokenAttribute string

	// KubeEnvAttribute is the instance attribute holding GKE's kube-env, a
	// YAML map with KUBELET_BOOTSTRAP_TOKEN, or KUBELET_CERT and
	// KUBELET_KEY (base64 PEM), and CA_CERT (base64 PEM). Empty means
	// DefaultKubeEnvAttribute.
	KubeEnvAttribute string

	// CAFile is a PEM CA bundle on the node's disk. When set it is used
	// and kube-env's CA_CERT is ignored: a trust anchor provisioned with
	// the node image is harder to tamper with than one delivered next to
	// the secret. When empty, kube-env's CA_CERT is used.
	CAFile string

	// CABundleAttribute is the instance, then project, attribute holding
	// the cluster's PEM trust bundle, used when CAFile is empty and before
	// kube-env's CA_CERT. Empty means DefaultCABundleAttribute.
	CABundleAttribute string

	// CAPin is optional, "sha256:<hex of the SHA-256 of a CA certificate's
	// DER SubjectPublicKeyInfo>", as kubeadm's
	// --discovery-token-ca-cert-hash. When set, at least one CA
	// certificate in the bundle, from whichever source, must match or
	// Fetch fails with ErrPinMismatch.
	CAPin string

	// Logger receives which credential was found and from where, never
	// its secret. Nil discards.
	Logger *slog.Logger
}

// Credential is a bootstrap credential: exactly one of Token and
// CertPEM/KeyPEM is set. Print it with String (or log it with slog, which
// uses LogValue); never print its fields.
type Credential struct {
	// Token is a kubeadm bootstrap token, "abcdef.0123456789abcdef", or
	// empty.
	Token string
	// CertPEM and KeyPEM are a shared bootstrap client certificate (chain)
	// and its key, validated to parse and match, or nil.
	CertPEM, KeyPEM []byte
	// CABundle is the PEM CA bundle that authenticates the control plane:
	// only CERTIFICATE blocks, at least one of them a CA certificate.
	CABundle []byte
	// Source is where the credential came from, for logs, e.g.
	// "instance/attributes/nodetrust-bootstrap-token" or
	// "instance/attributes/kube-env KUBELET_BOOTSTRAP_TOKEN".
	Source string
	// CASource is where CABundle came from: a file path,
	// "instance/attributes/nodetrust-ca-bundle",
	// "project/attributes/nodetrust-ca-bundle" or
	// "instance/attributes/kube-env CA_CERT".
	CASource string
}

// String describes c without its secret: "token abcdef.<redacted> from
// instance/attributes/nodetrust-bootstrap-token" or "client certificate
// CN=kubelet from instance/attributes/kube-env KUBELET_CERT+KUBELET_KEY".
func (c *Credential) String() string {
	if c == nil {
		return "<no credential>"
	}
	var what string
	switch {
	case c.Token != "":
		what = "token " + redactToken(c.Token)
	case len(c.CertPEM) > 0:
		what = "client certificate"
		if cert, err := firstCert(c.CertPEM); err == nil {
			what += " " + cert.Subject.String()
		}
	default:
		what = "empty credential"
	}
	s := what + " from " + c.Source
	if c.CASource != "" {
		s += ", CA from " + c.CASource
	}
	return s
}

// GoString is String, so that %#v does not print the secret either.
func (c *Credential) GoString() string { return c.String() }

// LogValue is String, so that slog does not log the secret.
func (c *Credential) LogValue() slog.Value { return slog.StringValue(c.String()) }

// redactToken keeps the public token ID of a well-formed token and
// nothing of anything else.
func redactToken(t string) string {
	if ValidateToken(t) != nil {
		return "<redacted>"
	}
	id, _, _ := strings.Cut(t, ".")
	return id + ".<redacted>"
}

// Fetch reads the bootstrap credential, trying in order the token
// attribute, kube-env's KUBELET_BOOTSTRAP_TOKEN, and kube-env's
// KUBELET_CERT and KUBELET_KEY. An undefined or empty attribute or key is
// skipped; the first one present is used and must be valid (a malformed
// one fails with ErrBadCredential rather than falling through, so that a
// mistake is seen). It then loads the CA bundle as CABundle does and
// checks CAPin.
func (c *Config) Fetch(ctx context.Context) (*Credential, error) {
	if c.Metadata == nil {
		return nil, fmt.Errorf("bootstrap: %w: no metadata client", ErrInvalidConfig)
	}
	pin, err := c.pin()
	if err != nil {
		return nil, err
	}
	log := c.logger()
	tokenAttr := or(c.TokenAttribute, DefaultTokenAttribute)
	envAttr := or(c.KubeEnvAttribute, DefaultKubeEnvAttribute)

	cred, env, err := c.find(ctx, log, tokenAttr, envAttr)
	if err != nil {
		return nil, err
	}

	if cred.CABundle, cred.CASource, err = c.caBundle(ctx, log, env, pin); err != nil {
		return nil, err
	}
	log.Info("bootstrap credential found", "credential", cred)
	return cred, nil
}

// find returns the first credential present, and kube-env when it was
// read.
func (c *Config) find(ctx context.Context, log *slog.Logger, tokenAttr, envAttr string) (*Credential, map[string]string, error) {
	tokenSource := "instance/attributes/" + tokenAttr
	tok, err := c.Metadata.InstanceAttribute(ctx, tokenAttr)
	switch {
	case errors.Is(err, mdclient.ErrNotDefined):
		log.Debug("bootstrap token attribute not defined", "attribute", tokenAttr)
	case err != nil:
		return nil, nil, fmt.Errorf("bootstrap: read %s: %w", tokenSource, err)
	case strings.TrimSpace(tok) == "":
		log.Debug("bootstrap token attribute empty", "attribute", tokenAttr)
	default:
		tok = strings.TrimSpace(tok)
		if err := ValidateToken(tok); err != nil {
			return nil, nil, fmt.Errorf("bootstrap: %s: %w: %w", tokenSource, ErrBadCredential, err)
		}
		return &Credential{Token: tok, Source: tokenSource}, nil, nil
	}

	envSource := "instance/attributes/" + envAttr
	env, err := c.kubeEnv(ctx, log, envAttr)
	if err != nil {
		return nil, nil, err
	}
	if tok := strings.TrimSpace(env[KubeEnvToken]); tok != "" {
		if err := ValidateToken(tok); err != nil {
			return nil, nil, fmt.Errorf("bootstrap: %s %s: %w: %w", envSource, KubeEnvToken, ErrBadCredential, err)
		}
		return &Credential{Token: tok, Source: envSource + " " + KubeEnvToken}, env, nil
	}
	certV, keyV := strings.TrimSpace(env[KubeEnvCert]), strings.TrimSpace(env[KubeEnvKey])
	switch {
	case certV == "" && keyV == "":
		return nil, nil, fmt.Errorf("bootstrap: %s not defined or empty, and %s has no %s, %s or %s: %w",
			tokenSource, envSource, KubeEnvToken, KubeEnvCert, KubeEnvKey, ErrNoCredential)
	case keyV == "":
		return nil, nil, fmt.Errorf("bootstrap: %s has %s but no %s: %w", envSource, KubeEnvCert, KubeEnvKey, ErrBadCredential)
	case certV == "":
		return nil, nil, fmt.Errorf("bootstrap: %s has %s but no %s: %w", envSource, KubeEnvKey, KubeEnvCert, ErrBadCredential)
	}
	certPEM, err := decodePEMValue(certV)
	if err != nil {
		return nil, nil, fmt.Errorf("bootstrap: %s %s: %w: %w", envSource, KubeEnvCert, ErrBadCredential, err)
	}
	keyPEM, err := decodePEMValue(keyV)
	if err != nil {
		return nil, nil, fmt.Errorf("bootstrap: %s %s: %w: %w", envSource, KubeEnvKey, ErrBadCredential, err)
	}
	certPEM, keyPEM, err = checkPair(certPEM, keyPEM, KubeEnvCert, KubeEnvKey)
	if err != nil {
		return nil, nil, fmt.Errorf("bootstrap: %s: %w: %w", envSource, ErrBadCredential, err)
	}
	return &Credential{CertPEM: certPEM, KeyPEM: keyPEM, Source: envSource + " " + KubeEnvCert + "+" + KubeEnvKey}, env, nil
}

// kubeEnv reads and parses kube-env; undefined or empty is an empty map.
func (c *Config) kubeEnv(ctx context.Context, log *slog.Logger, attr string) (map[string]string, error) {
	source := "instance/attributes/" + attr
	v, err := c.Metadata.InstanceAttribute(ctx, attr)
	if errors.Is(err, mdclient.ErrNotDefined) {
		log.Debug("kube-env attribute not defined", "attribute", attr)
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("bootstrap: read %s: %w", source, err)
	}
	env, err := ParseKubeEnv([]byte(v))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %s: %w: %w", source, ErrBadCredential, err)
	}
	return env, nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
