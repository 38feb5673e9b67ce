package instances

import (
	"net/netip"
	"testing"

	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/metadata"
)

func TestOwnersNodeForIP(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	data := &metadata.Data{Instances: []metadata.Instance{
		{Name: "n1", HostAddresses: []string{"10.0.0.1", "10.0.0.9"}},
		{Name: "n2", HostAddresses: []string{"10.0.0.2", "10.0.0.9"}},
	}}
	r := New(data, st)
	o := NewOwners(r)
	lookup := func(ip string) string {
		node, ok := o.NodeForIP(netip.MustParseAddr(ip))
		if ok != (node != "") {
			t.Fatalf("NodeForIP(%s) = %q, %v", ip, node, ok)
		}
		return node
	}
	tests := []struct{ ip, want string }{
		{"10.0.0.1", "n1"},
		{"::ffff:10.0.0.2", "n2"},
		{"10.0.0.9", ""}, // claimed by two nodes
		{"10.0.0.3", ""},
	}
	for _, tt := range tests {
		if got := lookup(tt.ip); got != tt.want {
			t.Errorf("NodeForIP(%s) = %q, want %q", tt.ip, got, tt.want)
		}
	}
	if err := r.Register(Instance{Name: "n3", IPs: []string{"10.0.0.3"}}); err != nil {
		t.Fatal(err)
	}
	if got := lookup("10.0.0.3"); got != "n3" {
		t.Errorf("after registering n3: NodeForIP(10.0.0.3) = %q, want n3", got)
	}
	if err := r.Unregister("n3"); err != nil {
		t.Fatal(err)
	}
	if got := lookup("10.0.0.3"); got != "" {
		t.Errorf("after unregistering n3: NodeForIP(10.0.0.3) = %q, want none", got)
	}
}
