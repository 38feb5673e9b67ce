// Package tunnelwire holds the wire contract shared by the agent and the
// control plane ends of nodetrust's reverse tunnels: the ALPN name, the
// node identity in client certificates, the header that says why a stream
// was refused, and the HTTP/2 sizes both ends configure. It has no policy
// and does no I/O.
//
// The agent dials the control plane with TLS and offers ALPN; after the
// handshake the roles reverse: the agent serves HTTP/2 on the connection
// and the control plane is the HTTP/2 client. Each proxied TCP connection
// is one HTTP/2 CONNECT stream whose :authority is the destination
// host:port, so every stream has its own flow-control window.
package tunnelwire

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ALPN is the application protocol the agent offers on the tunnel port.
// The control plane answers other protocols ("http/1.1") on the same port
// with its HTTP CONNECT frontend.
const ALPN = "nodetrust-tunnel/1"

// Node identity in a client certificate: CN=system:node:<name>,
// O=system:nodes, as kubelets have.
const (
	NodeUserPrefix = "system:node:"
	NodesGroup     = "system:nodes"
)

// NodeName returns the node name of a certificate subject, and whether the
// subject is a node's (CN system:node:<name> with O system:nodes).
func NodeName(commonName string, organizations []string) (string, bool) {
	name, ok := strings.CutPrefix(commonName, NodeUserPrefix)
	if !ok || name == "" || !ValidNodeName(name) {
		return "", false
	}
	for _, o := range organizations {
		if o == NodesGroup {
			return name, true
		}
	}
	return "", false
}

// ValidNodeName reports whether s is a DNS-1123 subdomain, the form of a
// Kubernetes node name.
func ValidNodeName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// HeaderRefusal is set by the agent on a non-200 answer to a CONNECT
// stream; its value is one of the Refused* reasons.
const HeaderRefusal = "Nodetrust-Tunnel-Refusal"

// Reasons an agent refuses a stream.
const (
	RefusedNotAllowed   = "not_allowed"     // destination not in the allowlist (403)
	RefusedBadTarget    = "bad_destination" // :authority not a strict host:port (400)
	RefusedResolve      = "resolve_failed"  // an allowlisted name did not resolve (502)
	RefusedDialFailed   = "dial_failed"     // the destination did not accept (502)
	RefusedBadMethod    = "bad_method"      // not a CONNECT (405)
	RefusedShuttingDown = "shutting_down"   // tunnel draining (503)
)

// HTTP/2 sizes. Frames of up to MaxFrameSize carry bulk data; each stream
// may have StreamWindow bytes in flight towards the agent, and the whole
// connection ConnWindow, so one stalled stream holds at most StreamWindow
// of the connection's window.
const (
	MaxFrameSize  = 1 << 20
	StreamWindow  = 4 << 20
	ConnWindow    = 1 << 30
	MaxStreams    = 4096
	CopyBufferLen = 64 << 10
)

// Keepalive defaults: each end pings after KeepAlive without reads and
// drops the connection when the answer takes longer than PingTimeout, well
// inside the idle timeouts of NATs and load balancers.
const (
	KeepAlive   = 15 * time.Second
	PingTimeout = 10 * time.Second
)

// The server speaks first on a tunnel: before its HTTP/2 preface it sends
// one hello line, "NODETRUST-TUNNEL id=<server id> count=<replicas>\n", so
// an agent that reaches the servers through one load-balanced address can
// tell replicas apart and keep a tunnel to each of the count of them.
const helloPrefix = "NODETRUST-TUNNEL "

// MaxHelloLen bounds the hello line.
const MaxHelloLen = 256

// Hello formats the hello line of server id among count replicas.
func Hello(id string, count int) string {
	return fmt.Sprintf("%sid=%s count=%d\n", helloPrefix, id, max(count, 1))
}

// ParseHello parses a hello line (with its newline).
func ParseHello(line string) (id string, count int, err error) {
	rest, ok := strings.CutPrefix(line, helloPrefix)
	if !ok || !strings.HasSuffix(rest, "\n") {
		return "", 0, errors.New("tunnel hello: not a nodetrust tunnel server")
	}
	if _, err := fmt.Sscanf(strings.TrimSuffix(rest, "\n"), "id=%s count=%d", &id, &count); err != nil || id == "" || count < 1 || count > 1000 {
		return "", 0, fmt.Errorf("tunnel hello: malformed %q", strings.TrimSpace(line))
	}
	return id, count, nil
}
