package metadata

import (
	"net/netip"
	"sort"
)

// instanceViews holds an instance's two trees.
type instanceViews struct {
	name string
	host *node
	pod  *node
}

func (iv *instanceViews) root(v View) *node {
	switch v {
	case ViewHost:
		return iv.host
	case ViewPod:
		return iv.pod
	}
	return nil
}

// snapshot is one immutable generation of the served data. A reload builds
// a new one and swaps it in; changed is closed when that happens.
type snapshot struct {
	data      *Data
	byName    map[string]*instanceViews
	hosts     map[netip.Addr]*instanceViews
	podBits   []int // distinct pod-range prefix lengths, longest first
	pods      map[netip.Prefix]*instanceViews
	legacy    bool
	changed   chan struct{}
	generated uint64
}

func newSnapshot(d *Data, gen uint64) (*snapshot, error) {
	if d == nil {
		return &snapshot{changed: make(chan struct{}), generated: gen}, nil
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	concealed := map[string]bool{}
	for _, k := range d.Concealed() {
		concealed[k] = true
	}
	hostOpt := treeOptions{}
	podOpt := treeOptions{concealed: concealed, hideTokens: !d.PodView.ServiceAccountTokens, hideIdentity: !d.PodView.Identity}
	s := &snapshot{
		data:      d,
		byName:    map[string]*instanceViews{},
		hosts:     map[netip.Addr]*instanceViews{},
		pods:      map[netip.Prefix]*instanceViews{},
		legacy:    d.LegacyEndpoints,
		changed:   make(chan struct{}),
		generated: gen,
	}
	bits := map[int]bool{}
	for i := range d.Instances {
		in := &d.Instances[i]
		iv := &instanceViews{name: in.Name, host: buildTree(d, in, hostOpt), pod: buildTree(d, in, podOpt)}
		s.byName[in.Name] = iv
		for _, a := range in.HostAddresses {
			s.hosts[netip.MustParseAddr(a).Unmap()] = iv
		}
		for _, r := range in.PodRanges {
			p := netip.MustParsePrefix(r)
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			p = p.Masked()
			s.pods[p] = iv
			bits[p.Bits()] = true
		}
	}
	for b := range bits {
		s.podBits = append(s.podBits, b)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(s.podBits)))
	return s, nil
}

// callerOf maps a prepared request to an instance and a view: by what the
// server's classifier said, or else by source address. Unknown callers get
// ViewNone: fail closed.
func (s *snapshot) callerOf(req *request) (*instanceViews, View) {
	if !req.classified {
		return s.caller(req.addr)
	}
	if req.view != ViewHost && req.view != ViewPod {
		return nil, ViewNone
	}
	name := req.inst
	if name == "" {
		if len(s.byName) != 1 || s.data == nil {
			return nil, ViewNone
		}
		name = s.data.Instances[0].Name
	}
	if iv := s.byName[name]; iv != nil {
		return iv, req.view
	}
	return nil, ViewNone
}

// caller maps a source address to an instance and a view. Unknown callers
// get viewNone: fail closed.
func (s *snapshot) caller(a netip.Addr) (*instanceViews, View) {
	a = a.Unmap()
	if iv := s.hosts[a]; iv != nil {
		return iv, ViewHost
	}
	for _, b := range s.podBits {
		if b > a.BitLen() {
			continue
		}
		p, err := a.Prefix(b)
		if err != nil {
			continue
		}
		if iv := s.pods[p]; iv != nil {
			return iv, ViewPod
		}
	}
	return nil, ViewNone
}
