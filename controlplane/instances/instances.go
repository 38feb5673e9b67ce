// Package instances is the control plane's instance registry: which IP
// addresses and DNS names each node owns, from the metadata data file and
// from registrations through the API. The approver signs a kubelet serving
// certificate only for names its node owns.
package instances

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/metadata"
)

// Kind is the store kind of registered instances.
const Kind = "instance"

// Errors.
var (
	ErrUnknownNode = errors.New("node is not in the instance registry")
	ErrNotOwned    = errors.New("name is not owned by the node")
	ErrInvalid     = errors.New("invalid instance")
)

// Instance is a node and the addresses it owns.
type Instance struct {
	Name     string   `json:"name"`
	IPs      []string `json:"ips,omitempty"`
	DNSNames []string `json:"dnsNames,omitempty"`
}

// Validate checks the name and addresses.
func (in *Instance) Validate() error {
	if in.Name == "" || strings.ContainsAny(in.Name, "/ \x00") {
		return fmt.Errorf("%w: name %q", ErrInvalid, in.Name)
	}
	for _, ip := range in.IPs {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("%w: instance %s: IP %q: %v", ErrInvalid, in.Name, ip, err)
		}
	}
	for _, d := range in.DNSNames {
		if d == "" || strings.ContainsAny(d, "/ \x00") {
			return fmt.Errorf("%w: instance %s: DNS name %q", ErrInvalid, in.Name, d)
		}
	}
	return nil
}

// Registry looks nodes up in the static data and the store.
type Registry struct {
	static map[string]Instance
	store  *store.Store
}

// New returns a registry over data (may be nil) and st (may be nil).
func New(data *metadata.Data, st *store.Store) *Registry {
	r := &Registry{static: map[string]Instance{}, store: st}
	if data != nil {
		for i := range data.Instances {
			mi := &data.Instances[i]
			ips, dns := mi.Addresses()
			in := Instance{Name: mi.Name, DNSNames: dns}
			for _, ip := range ips {
				in.IPs = append(in.IPs, ip.String())
			}
			r.static[mi.Name] = in
		}
	}
	return r
}

// Lookup returns what node owns. Registered addresses add to those of the
// data file.
func (r *Registry) Lookup(node string) (Instance, bool) {
	in, ok := r.static[node]
	if r.store != nil {
		if o, err := r.store.Get(Kind, node); err == nil {
			var reg Instance
			if json.Unmarshal(o.Data, &reg) == nil {
				in.Name = node
				in.IPs = append(slices.Clone(in.IPs), reg.IPs...)
				in.DNSNames = append(slices.Clone(in.DNSNames), reg.DNSNames...)
				ok = true
			}
		}
	}
	return in, ok
}

// Register stores (or replaces) a registration.
func (r *Registry) Register(in Instance) error {
	if err := in.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	_, err = r.store.Update(Kind, in.Name, func(store.Object, uint64) ([]byte, error) { return b, nil })
	if errors.Is(err, store.ErrNotFound) {
		_, err = r.store.Create(Kind, in.Name, func(uint64) ([]byte, error) { return b, nil })
	}
	return err
}

// Unregister removes a registration.
func (r *Registry) Unregister(name string) error {
	_, err := r.store.Delete(Kind, name, nil)
	return err
}

// CheckOwned returns nil when node owns every IP and DNS name.
func (r *Registry) CheckOwned(node string, ips []net.IP, dnsNames []string) error {
	in, ok := r.Lookup(node)
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownNode, node)
	}
	return Owned(in, ips, dnsNames)
}

// Owned returns nil when in owns every IP and DNS name, or an error naming
// the first that it does not.
func Owned(in Instance, ips []net.IP, dnsNames []string) error {
	for _, ip := range ips {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return fmt.Errorf("%w: IP %v", ErrNotOwned, ip)
		}
		found := false
		for _, s := range in.IPs {
			if b, err := netip.ParseAddr(s); err == nil && b.Unmap() == a.Unmap() {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("%w: IP %s is not an address of node %q", ErrNotOwned, a.Unmap(), in.Name)
		}
	}
	for _, d := range dnsNames {
		if !slices.ContainsFunc(in.DNSNames, func(s string) bool { return strings.EqualFold(s, d) }) {
			return fmt.Errorf("%w: DNS name %q is not a name of node %q", ErrNotOwned, d, in.Name)
		}
	}
	return nil
}

// List returns the registered (not the static) instances.
func (r *Registry) List() []Instance {
	objs, _ := r.store.List(Kind)
	out := make([]Instance, 0, len(objs))
	for _, o := range objs {
		var in Instance
		if json.Unmarshal(o.Data, &in) == nil {
			out = append(out, in)
		}
	}
	return out
}
