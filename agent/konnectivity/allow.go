package konnectivity

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nodetrust/nodetrust/agent/tunnel"
)

// allowlist matches destinations against entries in tunnel.Allowlist
// syntax (self:PORT, IP:PORT, CIDR:PORT, NAME:PORT). New validates the
// entries with tunnel.ParseAllowlist first; this copy exists only because
// tunnel.Allowlist has no exported matcher yet.
type allowlist struct {
	prefixes []allowPrefix
	selfPort map[uint16]bool
	names    map[string]bool // "name:port"
}

type allowPrefix struct {
	p    netip.Prefix
	port uint16
}

func parseAllowlist(specs []string) (*allowlist, error) {
	if len(specs) == 0 {
		specs = tunnel.DefaultAllow
	}
	a := &allowlist{selfPort: map[uint16]bool{}, names: map[string]bool{}}
	for _, s := range specs {
		host, ps, err := net.SplitHostPort(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", tunnel.ErrAllowlist, s)
		}
		port, ok := parsePort(ps)
		if !ok {
			return nil, fmt.Errorf("%w: %q: bad port", tunnel.ErrAllowlist, s)
		}
		switch {
		case host == "self":
			a.selfPort[port] = true
		case strings.Contains(host, "/"):
			p, err := netip.ParsePrefix(host)
			if err != nil {
				return nil, fmt.Errorf("%w: %q: bad prefix", tunnel.ErrAllowlist, s)
			}
			a.prefixes = append(a.prefixes, allowPrefix{p.Masked(), port})
		default:
			if ip, err := netip.ParseAddr(host); err == nil {
				a.prefixes = append(a.prefixes, allowPrefix{netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()), port})
			} else {
				a.names[strings.ToLower(host)+":"+ps] = true
			}
		}
	}
	return a, nil
}

func (a *allowlist) allowsAddr(ip netip.Addr, port uint16, self []netip.Addr) bool {
	ip = ip.Unmap()
	for _, e := range a.prefixes {
		if e.port == port && e.p.Contains(ip) {
			return true
		}
	}
	if a.selfPort[port] {
		for _, s := range self {
			if s.Unmap() == ip {
				return true
			}
		}
	}
	return false
}

// destinations returns the addresses to try for a DIAL_REQ address, or
// an error saying why it is refused. The rules are the native tunnel's:
// an IP must be allowlisted; NodeName means the node's own addresses and
// loopback; an allowlisted name is dialled wherever it resolves; any
// other name only where it resolves to allowlisted addresses.
func (c *Client) destinations(ctx context.Context, authority string) ([]netip.AddrPort, error) {
	host, ps, err := net.SplitHostPort(authority)
	port, ok := parsePort(ps)
	if err != nil || !ok || host == "" {
		return nil, fmt.Errorf("destination %q is not HOST:PORT with a numeric port", authority)
	}
	notAllowed := fmt.Errorf("destination %s is not in this node's tunnel allowlist", authority)
	self := c.selfAddrs()
	filter := func(ips []netip.Addr) []netip.AddrPort {
		var out []netip.AddrPort
		for _, ip := range ips {
			if c.allow.allowsAddr(ip, port, self) {
				out = append(out, netip.AddrPortFrom(ip.Unmap(), port))
			}
		}
		return out
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() == "" {
			if out := filter([]netip.Addr{ip}); len(out) > 0 {
				return out, nil
			}
		}
		return nil, notAllowed
	}
	name := strings.ToLower(host)
	if node := strings.ToLower(c.cfg.NodeName); node != "" && name == node {
		cands := append(append([]netip.Addr(nil), self...), netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback())
		if out := filter(cands); len(out) > 0 {
			return out, nil
		}
		return nil, notAllowed
	}
	explicit := c.allow.names[name+":"+strconv.Itoa(int(port))]
	ips, err := c.cfg.Resolver.LookupNetIP(ctx, "ip", name)
	if err != nil || len(ips) == 0 {
		if !explicit {
			return nil, notAllowed
		}
		return nil, fmt.Errorf("resolve %s: %v", name, err)
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
