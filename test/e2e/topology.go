//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"

	"github.com/vishvananda/netlink"
)

// Addresses of the topology. They exist only inside the harness's own
// namespaces, so parallel runs may use the same ones.
const (
	// MetadataIP is owned by the metadata host; nodes route it to that host.
	MetadataIP = "169.254.169.254"
	// HostIP is the metadata host's address on the bridge (API, tunnels).
	HostIP = "10.77.0.1"
)

// NodeIP is node i's address on the metadata host's bridge.
func NodeIP(i int) string { return fmt.Sprintf("10.77.0.%d", 11+i) }

// PodSubnet is node i's pod range; the node's pod bridge has its .1.
func PodSubnet(i int) string { return fmt.Sprintf("10.77.%d.0/24", 11+i) }

func podGateway(i int) string { return fmt.Sprintf("10.77.%d.1", 11+i) }

func podIP(i, j int) string { return fmt.Sprintf("10.77.%d.%d", 11+i, 2+j) }

// TopologyOptions sizes a Topology.
type TopologyOptions struct {
	Nodes       int // default 2
	PodsPerNode int // default 1; AddPod adds more later
}

// Topology is the namespaces and links of one test:
//
//	metadata host ns: br0 10.77.0.1/24 + 169.254.169.254/32, veth vnI per node
//	node I ns:        eth0 10.77.0.(11+I)/24, route 169.254.169.254/32 via 10.77.0.1,
//	                  cbr0 10.77.(11+I).1/24 (pod bridge), forwarding on
//	pod J of node I:  eth0 10.77.(11+I).(2+J)/24, default via 10.77.(11+I).1
type Topology struct {
	// Run is the unique part of every namespace name of this topology.
	Run   string
	Host  *Namespace
	Nodes []*NodeNet
	all   []*Namespace
}

// NodeNet is one node's namespace and addresses.
type NodeNet struct {
	Index int
	NS    *Namespace
	IP    string
	Pods  []*PodNet
	topo  *Topology
}

// PodNet is one pod's namespace.
type PodNet struct {
	NS *Namespace
	IP string
}

var runSeq atomic.Int64

// NewTopology builds the namespaces and links. On error, whatever was built
// is torn down; otherwise the caller must Close it.
func NewTopology(opt TopologyOptions) (_ *Topology, err error) {
	if opt.Nodes == 0 {
		opt.Nodes = 2
	}
	if opt.PodsPerNode == 0 {
		opt.PodsPerNode = 1
	}
	if opt.Nodes > 200 {
		return nil, errors.New("e2e: at most 200 nodes")
	}
	t := &Topology{Run: fmt.Sprintf("%d-%d", os.Getpid(), runSeq.Add(1))}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.Host, err = t.newNS("md"); err != nil {
		return nil, err
	}
	h, err := t.Host.Netlink()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("md: add br0: %w", err)
	}
	for _, a := range []string{HostIP + "/24", MetadataIP + "/32"} {
		if err := addAddr(h, br, a); err != nil {
			return nil, fmt.Errorf("md: %w", err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("md: br0 up: %w", err)
	}
	for i := range opt.Nodes {
		n, err := t.addNode(h, br, i)
		if err != nil {
			return nil, err
		}
		for range opt.PodsPerNode {
			if _, err := n.AddPod(); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

func (t *Topology) newNS(role string) (*Namespace, error) {
	n, err := NewNamespace(Prefix + t.Run + "-" + role)
	if err != nil {
		return nil, err
	}
	t.all = append(t.all, n)
	return n, nil
}

func (t *Topology) addNode(h *netlink.Handle, br *netlink.Bridge, i int) (*NodeNet, error) {
	ns, err := t.newNS(fmt.Sprintf("node%d", i))
	if err != nil {
		return nil, err
	}
	n := &NodeNet{Index: i, NS: ns, IP: NodeIP(i), topo: t}
	t.Nodes = append(t.Nodes, n)
	hostEnd := fmt.Sprintf("vn%d", i)
	if err := addVeth(h, hostEnd, "eth0", ns, br.Name); err != nil {
		return nil, fmt.Errorf("md: %w", err)
	}
	// The metadata host answers pods directly (as the cloud's metadata
	// server sees pod addresses when nothing rewrites them).
	if err := addRoute(h, PodSubnet(i), n.IP); err != nil {
		return nil, fmt.Errorf("md: %w", err)
	}
	nh, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	eth, err := nh.LinkByName("eth0")
	if err != nil {
		return nil, err
	}
	if err := addAddr(nh, eth, n.IP+"/24"); err != nil {
		return nil, fmt.Errorf("%s: %w", ns.Name, err)
	}
	if err := nh.LinkSetUp(eth); err != nil {
		return nil, err
	}
	if err := n.SetMetadataRoute(true); err != nil {
		return nil, err
	}
	cbr := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cbr0"}}
	if err := nh.LinkAdd(cbr); err != nil {
		return nil, fmt.Errorf("%s: add cbr0: %w", ns.Name, err)
	}
	if err := addAddr(nh, cbr, podGateway(i)+"/24"); err != nil {
		return nil, fmt.Errorf("%s: %w", ns.Name, err)
	}
	if err := nh.LinkSetUp(cbr); err != nil {
		return nil, err
	}
	return n, ns.EnableForwarding()
}

// SetMetadataRoute adds (up) or deletes the node's route to MetadataIP, to
// make the metadata host unreachable from the node and back.
func (n *NodeNet) SetMetadataRoute(up bool) error {
	h, err := n.NS.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	if up {
		err = addRoute(h, MetadataIP+"/32", HostIP)
	} else {
		err = delRoute(h, MetadataIP+"/32", HostIP)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", n.NS.Name, err)
	}
	return nil
}

// AddPod adds a pod namespace on the node's pod bridge; it may be called at
// any time, also while the node's agent runs.
func (n *NodeNet) AddPod() (*PodNet, error) {
	j := len(n.Pods)
	if j > 200 {
		return nil, errors.New("e2e: at most 200 pods per node")
	}
	ns, err := n.topo.newNS(fmt.Sprintf("node%d-pod%d", n.Index, j))
	if err != nil {
		return nil, err
	}
	p := &PodNet{NS: ns, IP: podIP(n.Index, j)}
	n.Pods = append(n.Pods, p)
	nh, err := n.NS.Netlink()
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	if err := addVeth(nh, fmt.Sprintf("vp%d", j), "eth0", ns, "cbr0"); err != nil {
		return nil, fmt.Errorf("%s: %w", n.NS.Name, err)
	}
	ph, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	defer ph.Close()
	eth, err := ph.LinkByName("eth0")
	if err != nil {
		return nil, err
	}
	if err := addAddr(ph, eth, p.IP+"/24"); err != nil {
		return nil, fmt.Errorf("%s: %w", ns.Name, err)
	}
	if err := ph.LinkSetUp(eth); err != nil {
		return nil, err
	}
	gw := net.ParseIP(podGateway(n.Index))
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw}); err != nil {
		return nil, fmt.Errorf("%s: default route: %w", ns.Name, err)
	}
	return p, nil
}

// Close deletes every namespace of the topology (their links go with them).
func (t *Topology) Close() error {
	var errs []error
	for i := len(t.all) - 1; i >= 0; i-- {
		if err := t.all[i].Delete(); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", t.all[i].Name, err))
		}
	}
	t.all = nil
	return errors.Join(errs...)
}

// addVeth creates a veth pair in h's namespace, named local there and peer
// in ns, attaches local to master and sets it up.
func addVeth(h *netlink.Handle, local, peer string, ns *Namespace, master string) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: local},
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(ns.h),
	}
	if err := h.LinkAdd(v); err != nil {
		return fmt.Errorf("add veth %s/%s: %w", local, peer, err)
	}
	l, err := h.LinkByName(local)
	if err != nil {
		return err
	}
	m, err := h.LinkByName(master)
	if err != nil {
		return err
	}
	if err := h.LinkSetMaster(l, m); err != nil {
		return fmt.Errorf("attach %s to %s: %w", local, master, err)
	}
	return h.LinkSetUp(l)
}

func addAddr(h *netlink.Handle, l netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", cidr, l.Attrs().Name, err)
	}
	return nil
}

func route(dst, gw string) (*netlink.Route, error) {
	_, d, err := net.ParseCIDR(dst)
	if err != nil {
		return nil, err
	}
	return &netlink.Route{Dst: d, Gw: net.ParseIP(gw)}, nil
}

func addRoute(h *netlink.Handle, dst, gw string) error {
	r, err := route(dst, gw)
	if err != nil {
		return err
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s: %w", dst, gw, err)
	}
	return nil
}

func delRoute(h *netlink.Handle, dst, gw string) error {
	r, err := route(dst, gw)
	if err != nil {
		return err
	}
	if err := h.RouteDel(r); err != nil {
		return fmt.Errorf("delete route %s via %s: %w", dst, gw, err)
	}
	return nil
}
