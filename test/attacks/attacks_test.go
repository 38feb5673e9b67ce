package attacks

import (
	"strings"
	"testing"
)

func TestList(t *testing.T) {
	list := List()
	if len(list) < 85 {
		t.Fatalf("%d attacks, want at least 85", len(list))
	}
	names := map[string]bool{}
	for _, a := range list {
		if names[a.Name] {
			t.Errorf("duplicate attack name %q", a.Name)
		}
		names[a.Name] = true
		if a.Name == "" || a.Target == "" || strings.ContainsAny(a.Target, " \r\n") {
			t.Errorf("%q: bad target %q", a.Name, a.Target)
		}
		for _, e := range a.Extra {
			if strings.ContainsAny(e, "\r\n") {
				t.Errorf("%q: extra line %q holds CR or LF", a.Name, e)
			}
		}
		if r := a.Request(); !strings.HasPrefix(r, a.MethodOf()+" "+a.Target+" HTTP/1.1\r\n") || !strings.HasSuffix(r, "\r\n\r\n") {
			t.Errorf("%q: request head %q", a.Name, r)
		}
	}
	list[0].Name = "changed"
	if List()[0].Name == "changed" {
		t.Error("List shares its slice between calls")
	}
}

func TestLeaks(t *testing.T) {
	values, keys := []string{"s3cret"}, []string{"kube-env"}
	for _, s := range []string{"xs3cretx", "KUBE-ENV: 1", "Kube-Env"} {
		if len(Leaks(s, values, keys)) == 0 {
			t.Errorf("Leaks(%q) found nothing", s)
		}
	}
	if got := Leaks("S3CRET cluster-location", values, keys); len(got) != 0 {
		t.Errorf("Leaks = %q, want none (values match case-sensitively)", got)
	}
}
