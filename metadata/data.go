package metadata

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultConcealedAttributes are the attribute keys hidden from pods when the
// data file does not list its own: GKE's kube-env and the keys nodetrust's
// agent reads its bootstrap credentials from.
var DefaultConcealedAttributes = []string{
	"kube-env",
	"bootstrap-kubeconfig",
	"nodetrust-bootstrap-token",
	"nodetrust-bootstrap-cert",
	"nodetrust-bootstrap-key",
}

// ErrInvalidData is wrapped by every error about the content of a data file.
var ErrInvalidData = errors.New("invalid metadata data")

// Data is the content of a metadata data file: the project, the instances the
// server answers for, and what pods must not see.
type Data struct {
	Project   Project    `yaml:"project"`
	Instances []Instance `yaml:"instances"`
	// ConcealedAttributes are instance and project attribute keys that pods
	// never see, matched without regard to case. Nil means
	// DefaultConcealedAttributes; an empty list conceals no attribute.
	ConcealedAttributes []string `yaml:"concealedAttributes"`
	// PodView loosens the pod view; its zero value is the safe default.
	PodView PodView `yaml:"podView"`
	// LegacyEndpoints serves /computeMetadata/v1beta1/ (which needs no
	// Metadata-Flavor header) as GCE did before 2019. Off by default.
	LegacyEndpoints bool `yaml:"legacyEndpoints"`
}

// PodView says which service-account credentials pods may read. Both are
// concealed by default: a pod that holds the node's token or identity can
// act as the node.
type PodView struct {
	ServiceAccountTokens bool `yaml:"serviceAccountTokens"`
	Identity             bool `yaml:"identity"`
}

// Project is the project/ subtree.
type Project struct {
	ProjectID        string            `yaml:"projectId"`
	NumericProjectID uint64            `yaml:"numericProjectId"`
	Attributes       map[string]string `yaml:"attributes"`
}

// Instance is one VM: its instance/ subtree and who may read it.
type Instance struct {
	Name              string             `yaml:"name"`
	ID                uint64             `yaml:"id"`
	Zone              string             `yaml:"zone"`
	Hostname          string             `yaml:"hostname"`
	MachineType       string             `yaml:"machineType"`
	Description       string             `yaml:"description"`
	Image             string             `yaml:"image"`
	CPUPlatform       string             `yaml:"cpuPlatform"`
	Tags              []string           `yaml:"tags"`
	NetworkInterfaces []NetworkInterface `yaml:"networkInterfaces"`
	Attributes        map[string]string  `yaml:"attributes"`
	// ServiceAccounts maps "default" or an email to the account.
	ServiceAccounts map[string]ServiceAccount `yaml:"serviceAccounts"`
	// HostAddresses are the source addresses of the VM's own processes:
	// a caller from one of them gets the full view.
	HostAddresses []string `yaml:"hostAddresses"`
	// PodRanges are the CIDRs of the VM's pods: a caller from one of them
	// gets the concealed view.
	PodRanges []string `yaml:"podRanges"`
}

// NetworkInterface is one entry of instance/network-interfaces/.
type NetworkInterface struct {
	IP            string         `yaml:"ip"`
	MAC           string         `yaml:"mac"`
	Network       string         `yaml:"network"`
	Gateway       string         `yaml:"gateway"`
	Subnetmask    string         `yaml:"subnetmask"`
	MTU           int            `yaml:"mtu"`
	DNSServers    []string       `yaml:"dnsServers"`
	IPAliases     []string       `yaml:"ipAliases"`
	AccessConfigs []AccessConfig `yaml:"accessConfigs"`
}

// AccessConfig is an external address of a network interface.
type AccessConfig struct {
	ExternalIP string `yaml:"externalIp"`
	Type       string `yaml:"type"`
}

// ServiceAccount is one entry of instance/service-accounts/.
type ServiceAccount struct {
	Email   string   `yaml:"email"`
	Aliases []string `yaml:"aliases"`
	Scopes  []string `yaml:"scopes"`
	// Token is served at .../token as GCE's access-token JSON.
	Token *Token `yaml:"token"`
	// Identity is the JWT served at .../identity?audience=...
	Identity string `yaml:"identity"`
}

// Token is an OAuth2 access token as the token endpoint returns it.
type Token struct {
	AccessToken string `yaml:"accessToken"`
	ExpiresIn   int    `yaml:"expiresIn"`
	TokenType   string `yaml:"tokenType"`
}

// LoadFile reads and validates a data file. Errors name the file and, for
// syntax, unknown or mistyped fields, the line.
func LoadFile(path string) (*Data, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read metadata data: %w", err)
	}
	d, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// Parse decodes and validates data file content. Unknown fields are errors.
func Parse(b []byte) (*Data, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalidData, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if root.Kind == 0 {
		return nil, fmt.Errorf("%w: the file is empty", ErrInvalidData)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var d Data
	if err := dec.Decode(&d); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the file is empty", ErrInvalidData)
		}
		return nil, fmt.Errorf("%w: %s", ErrInvalidData, nameFields(&root, err))
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// Concealed returns the concealed attribute keys in lower case.
func (d *Data) Concealed() []string {
	src := d.ConcealedAttributes
	if src == nil {
		src = DefaultConcealedAttributes
	}
	out := make([]string, 0, len(src))
	for _, k := range src {
		out = append(out, strings.ToLower(k))
	}
	return out
}

// Validate checks what the YAML decoder cannot: names, addresses, ranges,
// and that no caller address can mean two instances or both views.
func (d *Data) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidData, fmt.Sprintf(format, a...))
	}
	if len(d.Instances) == 0 {
		return bad("no instances: the server would refuse every caller")
	}
	hosts := map[netip.Addr]string{}
	type rng struct {
		p    netip.Prefix
		inst string
	}
	var ranges []rng
	names := map[string]bool{}
	for i, in := range d.Instances {
		where := fmt.Sprintf("instances[%d]", i)
		if in.Name == "" {
			return bad("%s: name is empty", where)
		}
		where = fmt.Sprintf("instances[%d] (%s)", i, in.Name)
		if names[in.Name] {
			return bad("%s: name used twice", where)
		}
		names[in.Name] = true
		if len(in.HostAddresses) == 0 {
			return bad("%s: hostAddresses is empty: no caller would get the host view", where)
		}
		for _, a := range in.HostAddresses {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				return bad("%s: hostAddresses: %q is not an IP address", where, a)
			}
			ip = ip.Unmap()
			if other, dup := hosts[ip]; dup {
				return bad("%s: hostAddresses: %s is also a host address of %s", where, ip, other)
			}
			hosts[ip] = in.Name
		}
		for _, r := range in.PodRanges {
			p, err := netip.ParsePrefix(r)
			if err != nil {
				return bad("%s: podRanges: %q is not a CIDR", where, r)
			}
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			ranges = append(ranges, rng{p.Masked(), in.Name})
		}
		for k := range in.Attributes {
			if err := checkKey(k); err != nil {
				return bad("%s: attributes: %v", where, err)
			}
		}
		for k, sa := range in.ServiceAccounts {
			if k == "" || strings.ContainsAny(k, "/?#") {
				return bad("%s: serviceAccounts: %q is not a valid account name", where, k)
			}
			if k != "default" && sa.Email != "" && sa.Email != k {
				return bad("%s: serviceAccounts[%s]: email %q differs from its key", where, k, sa.Email)
			}
		}
		for j, ni := range in.NetworkInterfaces {
			if ni.IP != "" {
				if _, err := netip.ParseAddr(ni.IP); err != nil {
					return bad("%s: networkInterfaces[%d].ip: %q is not an IP address", where, j, ni.IP)
				}
			}
		}
	}
	for k := range d.Project.Attributes {
		if err := checkKey(k); err != nil {
			return bad("project: attributes: %v", err)
		}
	}
	for i, a := range ranges {
		for ip, inst := range hosts {
			if a.p.Contains(ip) {
				return bad("podRanges %s of %s contains %s, a host address of %s: a caller must map to one view", a.p, a.inst, ip, inst)
			}
		}
		for _, b := range ranges[i+1:] {
			if a.p.Overlaps(b.p) {
				return bad("podRanges %s of %s overlaps %s of %s", a.p, a.inst, b.p, b.inst)
			}
		}
	}
	return nil
}

func checkKey(k string) error {
	if k == "" {
		return errors.New("empty key")
	}
	if strings.ContainsAny(k, "/?#%;\x00\n\r ") || k == "." || k == ".." {
		return fmt.Errorf("key %q has a character a path cannot carry", k)
	}
	return nil
}

// Addresses returns the IP addresses and DNS names the instance owns: its
// host addresses, interface, alias and external IPs, its name and hostname.
// The control plane's approver checks serving-certificate SANs against it.
func (in *Instance) Addresses() (ips []netip.Addr, dnsNames []string) {
	add := func(s string) {
		if p, err := netip.ParsePrefix(s); err == nil && p.IsSingleIP() {
			s = p.Addr().String()
		}
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(ips, ip.Unmap()) {
			ips = append(ips, ip.Unmap())
		}
	}
	for _, a := range in.HostAddresses {
		add(a)
	}
	for _, ni := range in.NetworkInterfaces {
		add(ni.IP)
		for _, a := range ni.IPAliases {
			add(a)
		}
		for _, ac := range ni.AccessConfigs {
			add(ac.ExternalIP)
		}
	}
	for _, n := range []string{in.Name, in.Hostname} {
		if n != "" && !slices.Contains(dnsNames, n) {
			dnsNames = append(dnsNames, n)
		}
	}
	return ips, dnsNames
}

// nameFields rewrites the decoder's "line N: ..." messages so each also
// names the field at that line, e.g. "line 3 (project.numericProjectId):
// cannot unmarshal ...".
func nameFields(root *yaml.Node, err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return msg
	}
	out := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		var line int
		if _, scanErr := fmt.Sscanf(e, "line %d:", &line); scanErr == nil {
			if f := fieldAt(root, line, ""); f != "" {
				prefix := fmt.Sprintf("line %d:", line)
				e = fmt.Sprintf("line %d (%s):%s", line, f, strings.TrimPrefix(e, prefix))
			}
		}
		out = append(out, e)
	}
	return strings.Join(out, "; ")
}

// fieldAt returns the dotted path of the mapping key or value on line.
func fieldAt(n *yaml.Node, line int, path string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if f := fieldAt(c, line, path); f != "" {
				return f
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if k.Line == line && (v.Kind == yaml.ScalarNode || v.Line == line) {
				return p
			}
			if f := fieldAt(v, line, p); f != "" {
				return f
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if c.Kind == yaml.ScalarNode && c.Line == line {
				return p
			}
			if f := fieldAt(c, line, p); f != "" {
				return f
			}
		}
	}
	return ""
}
