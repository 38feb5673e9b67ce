package mdlocal

import (
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nodetrust/nodetrust/metadata"
)

// classify gives the host view to connections from one of the node's own
// addresses and the pod view to every other one, and to any it is unsure
// of. Only the connection counts, never a header. A pod cannot borrow a
// node address: the kernel drops packets arriving from outside with a local
// source address, and the answer would go to the node, not the pod.
func (m *Mirror) classify(r *http.Request) (string, metadata.View) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return "", metadata.ViewPod
	}
	own, err := m.isNode(ap.Addr().Unmap())
	if err != nil || !own {
		return "", metadata.ViewPod
	}
	return "", metadata.ViewHost
}

// nodeAddresses answers "is this one of the node's addresses" from netlink.
// A "no" may come from a list up to a second old (the safe direction: the
// caller is concealed from); a "yes" is always confirmed by a fresh list.
type nodeAddresses struct {
	list func() ([]netip.Addr, error)

	mu    sync.Mutex
	addrs map[netip.Addr]bool
	at    time.Time
}

func newNodeAddresses() *nodeAddresses { return &nodeAddresses{list: listAddresses} }

func (n *nodeAddresses) contains(a netip.Addr) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.addrs != nil && time.Since(n.at) < time.Second && !n.addrs[a] {
		return false, nil
	}
	l, err := n.list()
	if err != nil {
		n.addrs = nil
		return false, err
	}
	n.addrs = make(map[netip.Addr]bool, len(l))
	for _, x := range l {
		n.addrs[x] = true
	}
	n.at = time.Now()
	return n.addrs[a], nil
}

// listAddresses returns every address of every interface of the node,
// loopback and link-local included.
func listAddresses() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
