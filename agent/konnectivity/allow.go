package konnectivity

import (
	"context"
	"net/netip"
)

// destinations returns the addresses to try for a DIAL_REQ address, or an
// error saying why it is refused. The rules are the native tunnel's
// (tunnel.Allowlist.Destinations).
func (c *Client) destinations(ctx context.Context, authority string) ([]netip.AddrPort, error) {
	return c.allow.Destinations(ctx, authority, c.selfAddrs(), c.cfg.NodeName, c.cfg.Resolver)
}
