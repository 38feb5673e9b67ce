package tunnel

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// DefaultAllow is the allowlist used when the configuration has none: the
// kubelet's ports on the node's own addresses and on loopback.
var DefaultAllow = []string{
	"self:10250", "self:10255",
	"127.0.0.1:10250", "127.0.0.1:10255",
	"[::1]:10250", "[::1]:10255",
}

// ErrAllowlist is wrapped by every error about an allowlist entry.
var ErrAllowlist = errors.New("invalid tunnel allowlist entry")

// Allowlist says which destinations an agent dials for the control plane.
// Entries are HOST:PORT where HOST is
//
//   - self: any of the node's own addresses;
//   - an IP address: 127.0.0.1, [::1];
//   - a CIDR prefix: 10.0.0.0/8, [fd00::/8];
//   - a DNS name, which is then resolved and dialled wherever it points.
//
// PORT is one port number; there are no wildcards. Everything else is
// refused.
type Allowlist struct {
	entries []allowEntry
}

type entryKind int

const (
	kindPrefix entryKind = iota
	kindSelf
	kindName
)

type allowEntry struct {
	kind   entryKind
	prefix netip.Prefix
	name   string
	port   uint16
}

// ParseAllowlist parses allowlist entries; nil or empty means DefaultAllow.
func ParseAllowlist(specs []string) (*Allowlist, error) {
	if len(specs) == 0 {
		specs = DefaultAllow
	}
	a := &Allowlist{}
	for _, s := range specs {
		e, err := parseEntry(s)
		if err != nil {
			return nil, err
		}
		a.entries = append(a.entries, e)
	}
	return a, nil
}

func parseEntry(s string) (allowEntry, error) {
	bad := func(why string) (allowEntry, error) {
		return allowEntry{}, fmt.Errorf("%w: %q: %s (want self:PORT, IP:PORT, CIDR:PORT or NAME:PORT)", ErrAllowlist, s, why)
	}
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return bad("not HOST:PORT")
	}
	port, ok := parsePort(ps)
	if !ok {
		return bad("port must be a number from 1 to 65535")
	}
	e := allowEntry{port: port}
	switch {
	case host == "self":
		e.kind = kindSelf
	case strings.Contains(host, "/"):
		p, err := netip.ParsePrefix(host)
		if err != nil {
			return bad("bad CIDR prefix")
		}
		e.kind, e.prefix = kindPrefix, p.Masked()
	default:
		if ip, err := netip.ParseAddr(host); err == nil {
			if ip.Zone() != "" {
				return bad("zoned addresses are not allowed")
			}
			e.kind, e.prefix = kindPrefix, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen())
		} else if validHostname(host) {
			e.kind, e.name = kindName, strings.ToLower(host)
		} else {
			return bad("host is neither self, an IP, a CIDR prefix nor a DNS name")
		}
	}
	return e, nil
}

// allowsAddr reports whether ip:port is allowed; self lists the node's
// own addresses.
func (a *Allowlist) allowsAddr(ip netip.Addr, port uint16, self []netip.Addr) bool {
	ip = ip.Unmap()
	for _, e := range a.entries {
		if e.port != port {
			continue
		}
		switch e.kind {
		case kindPrefix:
			if e.prefix.Contains(ip) {
				return true
			}
		case kindSelf:
			for _, s := range self {
				if s.Unmap() == ip {
					return true
				}
			}
		}
	}
	return false
}

// allowsName reports whether the DNS name (lower case) is listed with port.
func (a *Allowlist) allowsName(name string, port uint16) bool {
	for _, e := range a.entries {
		if e.kind == kindName && e.port == port && e.name == name {
			return true
		}
	}
	return false
}

// parsePort accepts only plain decimal 1-65535.
func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint16(n), true
}

// validHostname reports whether s is a DNS name made of letters, digits,
// hyphens and dots (no trailing dot, no underscores, no IP-looking junk).
func validHostname(s string) bool {
	return tunnelwire.ValidNodeName(strings.ToLower(s))
}

// refusal is why a destination is not dialled.
type refusal struct {
	reason string // a tunnelwire.Refused* value
	msg    string
}

func (r *refusal) Error() string { return r.msg }

// Destinations parses a HOST:PORT authority strictly and returns the
// addresses to dial for it, in order, or an error saying why it is refused.
// self lists the node's own addresses; a name equal to nodeName (lower
// case) means those and loopback. Other names are resolved with r (nil
// means net.DefaultResolver): an allowlisted name may point anywhere; any
// other name only counts if it resolves to allowed addresses, and only
// those are dialled. These are the native tunnel's rules, exported for
// other tunnel modes.
func (a *Allowlist) Destinations(ctx context.Context, authority string, self []netip.Addr, nodeName string, r *net.Resolver) ([]netip.AddrPort, error) {
	node := strings.ToLower(nodeName)
	out, ref := a.destinations(ctx, authority, self, func() string { return node }, r)
	if ref != nil {
		return nil, ref
	}
	return out, nil
}

// destinations is the Client's view of Allowlist.Destinations.
func (c *Client) destinations(ctx context.Context, authority string) ([]netip.AddrPort, *refusal) {
	return c.allow.destinations(ctx, authority, c.selfAddrs(), c.nodeName, c.cfg.Resolver)
}

// destinations implements Destinations; nodeName returns the node's name
// in lower case and is called only when the host is a DNS name.
func (a *Allowlist) destinations(ctx context.Context, authority string, self []netip.Addr, nodeName func() string, r *net.Resolver) ([]netip.AddrPort, *refusal) {
	host, ps, err := net.SplitHostPort(authority)
	port, ok := parsePort(ps)
	if err != nil || !ok || host == "" {
		return nil, &refusal{tunnelwire.RefusedBadTarget, fmt.Sprintf("destination %q is not HOST:PORT with a numeric port", authority)}
	}
	notAllowed := &refusal{tunnelwire.RefusedNotAllowed, fmt.Sprintf("destination %s is not in this node's tunnel allowlist", authority)}
	filter := func(ips []netip.Addr) []netip.AddrPort {
		var out []netip.AddrPort
		for _, ip := range ips {
			if a.allowsAddr(ip, port, self) {
				out = append(out, netip.AddrPortFrom(ip.Unmap(), port))
			}
		}
		return out
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return nil, &refusal{tunnelwire.RefusedBadTarget, fmt.Sprintf("destination %q has a zone", authority)}
		}
		if out := filter([]netip.Addr{ip}); len(out) > 0 {
			return out, nil
		}
		return nil, notAllowed
	}
	if !validHostname(host) {
		return nil, &refusal{tunnelwire.RefusedBadTarget, fmt.Sprintf("destination host %q is neither an IP address nor a DNS name", host)}
	}
	name := strings.ToLower(host)
	if node := nodeName(); node != "" && name == node {
		cands := append(append([]netip.Addr(nil), self...), netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback())
		if out := filter(cands); len(out) > 0 {
			return out, nil
		}
		return nil, notAllowed
	}
	if r == nil {
		r = net.DefaultResolver
	}
	explicit := a.allowsName(name, port)
	ips, err := r.LookupNetIP(ctx, "ip", name)
	if err != nil || len(ips) == 0 {
		if !explicit {
			return nil, notAllowed
		}
		return nil, &refusal{tunnelwire.RefusedResolve, fmt.Sprintf("resolve %s: %v", name, err)}
	}
	if explicit {
		out := make([]netip.AddrPort, 0, len(ips))
		for _, ip := range ips {
			out = append(out, netip.AddrPortFrom(ip.Unmap(), port))
		}
		return out, nil
	}
	if out := filter(ips); len(out) > 0 {
		return out, nil
	}
	return nil, notAllowed
}

// nodeName is Config.NodeName, or else the name in the client
// certificate (CN=system:node:<name>), in lower case.
func (c *Client) nodeName() string {
	if c.cfg.NodeName != "" {
		return strings.ToLower(c.cfg.NodeName)
	}
	cert, err := c.cfg.ClientCertificate()
	if err != nil || cert == nil || len(cert.Certificate) == 0 {
		return ""
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return ""
		}
	}
	name, _ := tunnelwire.NodeName(leaf.Subject.CommonName, leaf.Subject.Organization)
	return name
}
