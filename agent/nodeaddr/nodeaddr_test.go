package nodeaddr

import (
	"net/netip"
	"testing"
)

func TestUsable(t *testing.T) {
	tests := []struct {
		ip   string
		want bool
	}{
		{"10.0.0.5", true},
		{"203.0.113.9", true},
		{"fd00::2", true},
		{"127.0.0.1", false},
		{"::1", false},
		{"169.254.169.254", false},
		{"fe80::1", false},
		{"224.0.0.1", false},
		{"0.0.0.0", false},
	}
	for _, tt := range tests {
		if got := Usable(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("Usable(%s) = %v, want %v", tt.ip, got, tt.want)
		}
	}
}

func TestListReadsKernelAddresses(t *testing.T) {
	addrs, err := List()
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range addrs {
		if !Usable(a) {
			t.Errorf("List returned %s", a)
		}
		if i > 0 && addrs[i-1].Compare(a) >= 0 {
			t.Errorf("not sorted and unique: %v", addrs)
		}
	}
	if len(IPs(addrs)) != len(addrs) {
		t.Fatal("IPs lost addresses")
	}
}
