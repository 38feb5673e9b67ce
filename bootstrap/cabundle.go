package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// DefaultCABundleAttribute is the instance or project attribute holding
// the cluster's trust bundle (PEM, every trusted root, active first). The
// control plane rewrites the project attribute on every CA rotation step
// (docs/rotation.md), so a node that was off during a rotation still finds
// the roots it needs.
const DefaultCABundleAttribute = "nodetrust-ca-bundle"

// CABundle reads the CA bundle that authenticates the control plane, from
// the first source present: CAFile, the instance attribute
// nodetrust-ca-bundle, the project attribute of that name, kube-env's
// CA_CERT. The one found must be valid (a malformed one fails with
// ErrBadCredential rather than falling through) and, when CAPin is set,
// hold a CA with that pin (ErrPinMismatch). It returns the bundle, re-
// encoded, and where it came from. None at all is ErrNoCA.
func (c *Config) CABundle(ctx context.Context) (bundle []byte, source string, err error) {
	if c.Metadata == nil {
		return nil, "", fmt.Errorf("bootstrap: %w: no metadata client", ErrInvalidConfig)
	}
	pin, err := c.pin()
	if err != nil {
		return nil, "", err
	}
	return c.caBundle(ctx, c.logger(), nil, pin)
}

func (c *Config) pin() ([]byte, error) {
	if c.CAPin == "" {
		return nil, nil
	}
	pin, err := parsePin(c.CAPin)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w: CAPin: %w", ErrInvalidConfig, err)
	}
	return pin, nil
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// caBundle is CABundle with kube-env already read (env non-nil) or not.
func (c *Config) caBundle(ctx context.Context, log *slog.Logger, env map[string]string, pin []byte) ([]byte, string, error) {
	bundle, source, err := c.findCABundle(ctx, log, env)
	if err != nil {
		return nil, "", err
	}
	if pin != nil {
		if err := checkPin(bundle, pin); err != nil {
			return nil, "", fmt.Errorf("bootstrap: CA bundle from %s: %w", source, err)
		}
	}
	return bundle, source, nil
}

func (c *Config) findCABundle(ctx context.Context, log *slog.Logger, env map[string]string) ([]byte, string, error) {
	if c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, "", fmt.Errorf("bootstrap: read CA file: %w", err)
		}
		bundle, err := parseCABundle(b)
		if err != nil {
			return nil, "", fmt.Errorf("bootstrap: CA file %s: %w: %w", c.CAFile, ErrBadCredential, err)
		}
		return bundle, c.CAFile, nil
	}
	attr := or(c.CABundleAttribute, DefaultCABundleAttribute)
	for _, src := range []struct {
		where string
		get   func(context.Context, string) (string, error)
	}{
		{"instance/attributes/", c.Metadata.InstanceAttribute},
		{"project/attributes/", c.Metadata.ProjectAttribute},
	} {
		source := src.where + attr
		v, err := src.get(ctx, attr)
		switch {
		case errors.Is(err, mdclient.ErrNotDefined):
			log.Debug("CA bundle attribute not defined", "attribute", source)
			continue
		case err != nil:
			return nil, "", fmt.Errorf("bootstrap: read %s: %w", source, err)
		case strings.TrimSpace(v) == "":
			continue
		}
		b, err := decodePEMValue(strings.TrimSpace(v))
		if err == nil {
			b, err = parseCABundle(b)
		}
		if err != nil {
			return nil, "", fmt.Errorf("bootstrap: %s: %w: %w", source, ErrBadCredential, err)
		}
		return b, source, nil
	}
	envAttr := or(c.KubeEnvAttribute, DefaultKubeEnvAttribute)
	envSource := "instance/attributes/" + envAttr
	if env == nil {
		var err error
		if env, err = c.kubeEnv(ctx, log, envAttr); err != nil {
			return nil, "", err
		}
	}
	v := strings.TrimSpace(env[KubeEnvCA])
	if v == "" {
		return nil, "", fmt.Errorf("bootstrap: CAFile is not set, no %s attribute on the instance or project, and %s has no %s: %w",
			attr, envSource, KubeEnvCA, ErrNoCA)
	}
	b, err := decodePEMValue(v)
	if err == nil {
		b, err = parseCABundle(b)
	}
	if err != nil {
		return nil, "", fmt.Errorf("bootstrap: %s %s: %w: %w", envSource, KubeEnvCA, ErrBadCredential, err)
	}
	return b, envSource + " " + KubeEnvCA, nil
}
