package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

func TestParseAllowlist(t *testing.T) {
	for _, s := range []string{"10.0.0.1", "10.0.0.1:0", "10.0.0.1:*", "10.0.0.1:+80", "10.0.0.0/33:80", "[fe80::1%eth0]:80", "a_b:80", "self:65536", ":80"} {
		if _, err := ParseAllowlist([]string{s}); !errors.Is(err, ErrAllowlist) {
			t.Errorf("ParseAllowlist(%q) = %v, want ErrAllowlist", s, err)
		}
	}
	if _, err := ParseAllowlist([]string{"self:10250", "10.0.0.0/8:80", "[fd00::/8]:443", "[::1]:10250", "kubelet.internal:10250"}); err != nil {
		t.Fatal(err)
	}
}

func newTestClient(t *testing.T, allow []string) *Client {
	t.Helper()
	c, err := New(Config{
		Servers:           []string{"127.0.0.1:1"},
		NodeName:          "node-1",
		Allow:             allow,
		ClientCertificate: func() (*tls.Certificate, error) { return nil, errors.New("none") },
		Roots:             func() (*x509.CertPool, error) { return x509.NewCertPool(), nil },
		SelfAddrs: func() ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::5")}, nil
		},
		Resolver: &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("no DNS in tests")
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDestinations(t *testing.T) {
	c := newTestClient(t, []string{"self:10250", "127.0.0.1:10255", "[::1]:10250", "192.168.0.0/16:9000"})
	for _, tc := range []struct {
		authority string
		want      []string // addresses to dial; nil means refused
		reason    string
	}{
		{"10.1.2.3:10250", []string{"10.1.2.3:10250"}, ""},
		{"[fd00::5]:10250", []string{"[fd00::5]:10250"}, ""},
		{"[::ffff:10.1.2.3]:10250", []string{"10.1.2.3:10250"}, ""},
		{"10.1.2.4:10250", nil, tunnelwire.RefusedNotAllowed},
		{"10.1.2.3:22", nil, tunnelwire.RefusedNotAllowed},
		{"127.0.0.1:10255", []string{"127.0.0.1:10255"}, ""},
		{"127.0.0.1:10250", nil, tunnelwire.RefusedNotAllowed},
		{"192.168.7.7:9000", []string{"192.168.7.7:9000"}, ""},
		{"node-1:10250", []string{"10.1.2.3:10250", "[fd00::5]:10250", "[::1]:10250"}, ""},
		{"NODE-1:10255", []string{"127.0.0.1:10255"}, ""},
		{"node-1:22", nil, tunnelwire.RefusedNotAllowed},
		{"other-host:10250", nil, tunnelwire.RefusedNotAllowed}, // does not resolve to an allowed address
		{"10.1.2.3:010250", nil, tunnelwire.RefusedBadTarget},
		{"10.1.2.3", nil, tunnelwire.RefusedBadTarget},
		{"10.1.2.3:0", nil, tunnelwire.RefusedBadTarget},
		{"[fe80::1%eth0]:10250", nil, tunnelwire.RefusedBadTarget},
		{"a_b:10250", nil, tunnelwire.RefusedBadTarget},
		{":10250", nil, tunnelwire.RefusedBadTarget},
	} {
		got, ref := c.destinations(context.Background(), tc.authority)
		var gotS []string
		for _, a := range got {
			gotS = append(gotS, a.String())
		}
		reason := ""
		if ref != nil {
			reason = ref.reason
		}
		if !slices.Equal(gotS, tc.want) || reason != tc.reason {
			t.Errorf("destinations(%q) = %v, %q; want %v, %q", tc.authority, gotS, reason, tc.want, tc.reason)
		}
	}
}

func TestBackoffCapped(t *testing.T) {
	c := newTestClient(t, nil)
	for n := 1; n < 40; n++ {
		if d := c.backoff(n); d > c.cfg.BackoffMax || d < c.cfg.BackoffMin/2 {
			t.Fatalf("backoff(%d) = %v", n, d)
		}
	}
}

func TestAllowlistDestinationsExported(t *testing.T) {
	a, err := ParseAllowlist([]string{"self:10250", "127.0.0.1:10255"})
	if err != nil {
		t.Fatal(err)
	}
	self := []netip.Addr{netip.MustParseAddr("10.1.2.3")}
	got, err := a.Destinations(context.Background(), "Node-1:10250", self, "NODE-1", nil)
	if err != nil || len(got) != 1 || got[0].String() != "10.1.2.3:10250" {
		t.Fatalf("Destinations(node-1:10250) = %v, %v", got, err)
	}
	if _, err := a.Destinations(context.Background(), "10.1.2.4:10250", self, "node-1", nil); err == nil {
		t.Fatal("Destinations allowed an address not in the list")
	}
}
