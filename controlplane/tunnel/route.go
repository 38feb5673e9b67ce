package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// ErrBadTarget is wrapped by NodeFor when a frontend target is not
// <node-name>:<port> or <ip>:<port>.
var ErrBadTarget = errors.New("target is not <node-name>:<port> or <node-ip>:<port>")

// ErrUnknownIP is wrapped by NodeFor when no node is known to own the IP
// of a target; errors.Is(err, ErrNoTunnel) holds for it too.
var ErrUnknownIP = fmt.Errorf("%w: no node owns the IP", ErrNoTunnel)

// NodeFor returns the node that a frontend target (host:port, as in a
// CONNECT or a Konnectivity DIAL_REQ) goes to. A node name is taken as
// is. An IP address (kube-apiserver dials a node's InternalIP) goes to
// the node that Config.NodeForIP names; if that does not know the IP, to
// the one node whose tunnels come from that source address. An IP that
// several connected nodes come from (NAT) names none of them.
func (s *Server) NodeFor(address string) (string, error) {
	host, port, err := net.SplitHostPort(address)
	if _, ok := parsePort(port); err != nil || !ok {
		return "", fmt.Errorf("%w: %q", ErrBadTarget, address)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		if !tunnelwire.ValidNodeName(host) {
			return "", fmt.Errorf("%w: %q", ErrBadTarget, address)
		}
		return host, nil
	}
	if ip.Zone() != "" {
		return "", fmt.Errorf("%w: %q has a zone", ErrBadTarget, address)
	}
	ip = ip.Unmap()
	if s.cfg.NodeForIP != nil {
		if node, ok := s.cfg.NodeForIP(ip); ok {
			return node, nil
		}
	}
	if node, ok := s.nodeBySource(ip); ok {
		return node, nil
	}
	return "", fmt.Errorf("%w %s", ErrUnknownIP, ip)
}

// nodeBySource returns the node whose tunnel connections come from ip,
// if exactly one does.
func (s *Server) nodeBySource(ip netip.Addr) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	found := ""
	for node, list := range s.agents {
		for _, a := range list {
			ap, err := netip.ParseAddrPort(a.conn.RemoteAddr().String())
			if err != nil || ap.Addr().Unmap() != ip {
				continue
			}
			if found != "" && found != node {
				return "", false
			}
			found = node
		}
	}
	return found, found != ""
}
