package instances

import (
	"encoding/json"
	"net/netip"
	"sync"
)

// Owners answers which node owns an IP address, from a Registry's data
// file and registrations. It rebuilds its index only when the store has
// changed since the last lookup.
type Owners struct {
	r *Registry

	mu    sync.Mutex // guards rv, built, byIP
	rv    uint64
	built bool
	byIP  map[netip.Addr]string // "" when several nodes claim the address
}

// NewOwners returns an index over r.
func NewOwners(r *Registry) *Owners { return &Owners{r: r} }

// NodeForIP returns the node that owns ip, if exactly one does.
func (o *Owners) NodeForIP(ip netip.Addr) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var rv uint64
	if o.r.store != nil {
		rv = o.r.store.RV()
	}
	if !o.built || rv != o.rv {
		o.byIP = o.index()
		o.rv, o.built = rv, true
	}
	node := o.byIP[ip.Unmap()]
	return node, node != ""
}

// index maps every owned address to its node.
func (o *Owners) index() map[netip.Addr]string {
	m := map[netip.Addr]string{}
	add := func(node string, ips []string) {
		for _, s := range ips {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			a = a.Unmap()
			if cur, seen := m[a]; seen && cur != node {
				m[a] = "" // claimed by several nodes: none gets it
				continue
			}
			m[a] = node
		}
	}
	for name, in := range o.r.static {
		add(name, in.IPs)
	}
	if o.r.store != nil {
		objs, _ := o.r.store.List(Kind)
		for _, obj := range objs {
			var in Instance
			if json.Unmarshal(obj.Data, &in) == nil {
				add(obj.Name, in.IPs)
			}
		}
	}
	return m
}
