package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nodetrust/nodetrust/agent/steer"
	"github.com/nodetrust/nodetrust/agent/tunnel"
)

// ErrConfig is wrapped by every error about the agent's configuration.
var ErrConfig = errors.New("invalid agent configuration")

// Config is the agent's configuration file (/etc/nodetrust/agent.yaml).
type Config struct {
	// NodeName is the node's name; empty means the instance name from
	// metadata.
	NodeName string `yaml:"nodeName"`
	// Server is the Kubernetes API (or nodetrust control plane) URL.
	Server string `yaml:"server"`
	// Metadata says where the bootstrap secret is.
	Metadata MetadataConfig `yaml:"metadata"`
	// CAFile is a CA bundle used when metadata carries none.
	CAFile string `yaml:"caFile"`
	// CAPin, "sha256:<hex of SubjectPublicKeyInfo>", must match a CA of
	// the bundle when set.
	CAPin string `yaml:"caPin"`
	// StateDir holds certificates, keys and the status file (default
	// /var/lib/nodetrust).
	StateDir string `yaml:"stateDir"`
	// Kubeconfig is written for the kubelet (default
	// <stateDir>/kubelet.kubeconfig).
	Kubeconfig string `yaml:"kubeconfig"`
	// ClientCertDuration is the lifetime asked for (0: the signer's default).
	ClientCertDuration Duration `yaml:"clientCertDuration"`
	// Serving configures the kubelet serving certificate.
	Serving ServingConfig `yaml:"serving"`
	// MetricsListen serves /metrics and /healthz (empty: off).
	MetricsListen string `yaml:"metricsListen"`
	// CheckInterval is how often the renewal decision is re-checked, so
	// suspend, resume and clock jumps are noticed (default 1m).
	CheckInterval Duration `yaml:"checkInterval"`
	// CSRTimeout bounds one wait for a CSR to be issued (default 15m).
	CSRTimeout Duration `yaml:"csrTimeout"`
	// Tunnel configures the reverse tunnels to the control plane (off
	// when it lists no servers); see docs/tunnels.md.
	Tunnel TunnelConfig `yaml:"tunnel"`
	// PodMetadata configures the node-local concealing metadata server for
	// pods; see docs/metadata.md.
	PodMetadata PodMetadataConfig `yaml:"podMetadata"`
	// Trust configures how the agent follows the cluster's trust bundle
	// through CA rotations (docs/rotation.md).
	Trust TrustConfig `yaml:"trust"`
}

// TrustConfig configures the trust-bundle check.
type TrustConfig struct {
	// CheckInterval is how often the trust-bundle ConfigMap is read, with
	// jitter (default 1m).
	CheckInterval Duration `yaml:"checkInterval"`
}

// PodMetadataConfig configures the metadata server the agent serves pods:
// a concealing mirror of the upstream one, with pod traffic for
// 169.254.169.254 steered to it by policy routing.
type PodMetadataConfig struct {
	Enabled bool `yaml:"enabled"`
	// Listen is where pods' steered connections arrive (default
	// 169.254.169.254:80).
	Listen string `yaml:"listen"`
	// Upstream is host:port of the real metadata server; empty means
	// metadata.host.
	Upstream string `yaml:"upstream"`
	// PodInterfaces are names or patterns ("veth*", "cni*") of interfaces
	// pod traffic enters the node on.
	PodInterfaces []string `yaml:"podInterfaces"`
	// PodCIDRs are the pods' address ranges (IPv4).
	PodCIDRs []string `yaml:"podCIDRs"`
	// RouteTable and RulePriority of the steering (defaults 16925, 1699).
	RouteTable   int `yaml:"routeTable"`
	RulePriority int `yaml:"rulePriority"`
	// ConcealedAttributes are hidden from pods; absent means
	// metadata.DefaultConcealedAttributes.
	ConcealedAttributes []string `yaml:"concealedAttributes"`
	// ExposeServiceAccountTokens hands pods the node's access tokens.
	ExposeServiceAccountTokens bool `yaml:"exposeServiceAccountTokens"`
}

// steerConfig is the steering part of c.
func (c *PodMetadataConfig) steerConfig() (steer.Config, error) {
	sc := steer.Config{Interfaces: c.PodInterfaces, Table: c.RouteTable, Priority: c.RulePriority}
	for _, s := range c.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return sc, fmt.Errorf("%q is not a CIDR", s)
		}
		sc.CIDRs = append(sc.CIDRs, p)
	}
	_, err := steer.New(sc)
	return sc, err
}

// Tunnel modes: the nodetrust tunnel (docs/tunnels.md) or the agent side
// of a stock konnectivity-server (docs/konnectivity.md).
const (
	TunnelNative       = "native"
	TunnelKonnectivity = "konnectivity"
)

// TunnelConfig configures the agent's reverse tunnels.
type TunnelConfig struct {
	// Mode is native (default) or konnectivity.
	Mode string `yaml:"mode"`
	// Servers are the control plane's tunnel addresses (host:port); in
	// konnectivity mode, the konnectivity-servers' agent addresses, one
	// stream to each.
	Servers []string `yaml:"servers"`
	// ServerName overrides the name checked in the servers' certificates.
	ServerName string `yaml:"serverName"`
	// Allow lists the destinations the control plane may reach (self:PORT,
	// IP:PORT, CIDR:PORT, NAME:PORT); empty means the kubelet's ports.
	Allow []string `yaml:"allow"`
	// AgentID is the konnectivity agent id (default: the node name).
	AgentID string `yaml:"agentID"`
}

// MetadataConfig locates the metadata server and the bootstrap attributes.
type MetadataConfig struct {
	// Host is host:port of the metadata server; empty means
	// GCE_METADATA_HOST or 169.254.169.254.
	Host string `yaml:"host"`
	// TokenAttribute holds a bootstrap token (default
	// nodetrust-bootstrap-token).
	TokenAttribute string `yaml:"tokenAttribute"`
	// KubeEnvAttribute holds GKE's kube-env (default kube-env).
	KubeEnvAttribute string `yaml:"kubeEnvAttribute"`
}

// ServingConfig configures the kubelet serving certificate.
type ServingConfig struct {
	Enabled  bool     `yaml:"enabled"`
	Duration Duration `yaml:"duration"`
	// IPs and DNSNames are added to the SANs; the node's own addresses
	// (read with netlink) and hostname are always included unless
	// NoAutoAddresses is set.
	IPs             []string `yaml:"ips"`
	DNSNames        []string `yaml:"dnsNames"`
	NoAutoAddresses bool     `yaml:"noAutoAddresses"`
}

// Duration is a time.Duration written as "90s", "24h" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use e.g. 90s, 15m, 24h)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// LoadConfig reads, defaults and validates a configuration file. Errors
// name the file and, for YAML problems, the line.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent configuration: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes (unknown fields are errors), defaults and validates.
func ParseConfig(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %s", ErrConfig, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	c.setDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) setDefaults() {
	if c.StateDir == "" {
		c.StateDir = "/var/lib/nodetrust"
	}
	if c.Kubeconfig == "" {
		c.Kubeconfig = filepath.Join(c.StateDir, "kubelet.kubeconfig")
	}
	if c.Metadata.TokenAttribute == "" {
		c.Metadata.TokenAttribute = "nodetrust-bootstrap-token"
	}
	if c.Metadata.KubeEnvAttribute == "" {
		c.Metadata.KubeEnvAttribute = "kube-env"
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = Duration(time.Minute)
	}
	if c.Trust.CheckInterval == 0 {
		c.Trust.CheckInterval = Duration(time.Minute)
	}
	if c.CSRTimeout == 0 {
		c.CSRTimeout = Duration(15 * time.Minute)
	}
	if c.Tunnel.Mode == "" {
		c.Tunnel.Mode = TunnelNative
	}
	if c.PodMetadata.Listen == "" {
		c.PodMetadata.Listen = "169.254.169.254:80"
	}
	if c.PodMetadata.Upstream == "" {
		c.PodMetadata.Upstream = c.Metadata.Host
	}
}

func (c *Config) validate() error {
	bad := func(key, format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, key, fmt.Sprintf(format, a...))
	}
	if c.Server == "" {
		return bad("server", "required: the API URL, e.g. https://10.0.0.2:6443")
	}
	u, err := url.Parse(c.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return bad("server", "%q is not an https:// URL", c.Server)
	}
	if c.CAPin != "" && !strings.HasPrefix(c.CAPin, "sha256:") {
		return bad("caPin", "must be sha256:<hex of the CA's SubjectPublicKeyInfo>")
	}
	for _, d := range []struct {
		key string
		v   Duration
		min time.Duration
	}{
		{"clientCertDuration", c.ClientCertDuration, 10 * time.Minute},
		{"serving.duration", c.Serving.Duration, 10 * time.Minute},
	} {
		if d.v != 0 && time.Duration(d.v) < d.min {
			return bad(d.key, "%v is below the 10m minimum of the CSR API", time.Duration(d.v))
		}
	}
	if c.CheckInterval < 0 || c.CSRTimeout < 0 {
		return bad("checkInterval/csrTimeout", "must be positive")
	}
	if c.Trust.CheckInterval < 0 {
		return bad("trust.checkInterval", "must be positive")
	}
	for _, ip := range c.Serving.IPs {
		if net.ParseIP(ip) == nil {
			return bad("serving.ips", "%q is not an IP address", ip)
		}
	}
	if _, err := tunnel.ParseAllowlist(c.Tunnel.Allow); err != nil {
		return bad("tunnel.allow", "%v", err)
	}
	switch c.Tunnel.Mode {
	case TunnelNative:
		if c.Tunnel.AgentID != "" {
			return bad("tunnel.agentID", "only used in mode konnectivity")
		}
	case TunnelKonnectivity:
		if len(c.Tunnel.Servers) == 0 {
			return bad("tunnel.servers", "mode konnectivity needs at least one konnectivity-server agent address (host:port)")
		}
		for _, s := range c.Tunnel.Servers {
			if _, _, err := net.SplitHostPort(s); err != nil {
				return bad("tunnel.servers", "%q is not host:port", s)
			}
		}
	default:
		return bad("tunnel.mode", "%q is not native or konnectivity", c.Tunnel.Mode)
	}
	if pm := &c.PodMetadata; pm.Enabled {
		if len(pm.PodInterfaces) == 0 && len(pm.PodCIDRs) == 0 {
			return bad("podMetadata", "podInterfaces or podCIDRs needed: they say which traffic is a pod's")
		}
		if _, err := pm.steerConfig(); err != nil {
			return bad("podMetadata", "%v", err)
		}
		if _, _, err := net.SplitHostPort(pm.Listen); err != nil {
			return bad("podMetadata.listen", "%q is not host:port", pm.Listen)
		}
	}
	if !filepath.IsAbs(c.StateDir) {
		return bad("stateDir", "%q must be an absolute path", c.StateDir)
	}
	return nil
}
