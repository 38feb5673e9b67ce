package tunnel_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/nodetrust/nodetrust/controlplane/tunnel"
)

func TestNodeFor(t *testing.T) {
	ca := newCA(t)
	srv, err := tunnel.New(tunnel.Config{Certificate: ca.leaf(t, "tunnel-server", nil, true), ClientCAs: ca.pool,
		NodeForIP: func(ip netip.Addr) (string, bool) {
			switch ip {
			case netip.MustParseAddr("10.0.0.5"):
				return "node-5", true
			case netip.MustParseAddr("fd00::6"):
				return "node-6", true
			}
			return "", false
		}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, target, want string
		err                error
	}{
		{"node name", "node-1:10250", "node-1", nil},
		{"IPv4 in the registry", "10.0.0.5:10250", "node-5", nil},
		{"IPv4-mapped IPv6", "[::ffff:10.0.0.5]:10250", "node-5", nil},
		{"IPv6 in the registry", "[fd00::6]:10250", "node-6", nil},
		{"unknown IP", "10.0.0.7:10250", "", tunnel.ErrNoTunnel},
		{"zone", "[fe80::1%eth0]:10250", "", tunnel.ErrBadTarget},
		{"no port", "node-1", "", tunnel.ErrBadTarget},
		{"port 0", "node-1:0", "", tunnel.ErrBadTarget},
		{"bad name", "Node_1:10250", "", tunnel.ErrBadTarget},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := srv.NodeFor(tt.target)
			if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Errorf("NodeFor(%q) = %q, %v; want %q, %v", tt.target, got, err, tt.want, tt.err)
			}
		})
	}
}
