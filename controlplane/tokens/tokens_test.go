package tokens

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/internal/clock"
)

func TestTokenLifecycle(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	clk := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	m := &Manager{Store: st, Clock: clk}

	tok, info, err := m.Create(time.Hour, "node pool a", []string{"system:bootstrappers:pool-a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Parse(tok); err != nil {
		t.Fatalf("created token %q does not parse: %v", tok, err)
	}
	if strings.Contains(info.SecretHash, strings.Split(tok, ".")[1]) {
		t.Fatal("secret stored in clear")
	}
	user, groups, err := m.Authenticate(tok, clk.Now())
	if err != nil || user != "system:bootstrap:"+info.ID || groups[0] != "system:bootstrappers" || groups[1] != "system:bootstrappers:pool-a" {
		t.Fatalf("authenticate = %q %q %v", user, groups, err)
	}

	for _, tc := range []struct {
		name  string
		token string
		want  error
	}{
		{"malformed", "abc.def", ErrMalformed},
		{"uppercase", strings.ToUpper(tok), ErrMalformed},
		{"unknown id", "zzzzzz.0123456789abcdef", ErrUnknown},
		{"wrong secret", info.ID + ".0123456789abcdef", ErrUnknown},
	} {
		if _, _, err := m.Authenticate(tc.token, clk.Now()); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	clk.Advance(time.Hour)
	if _, _, err := m.Authenticate(tok, clk.Now()); !errors.Is(err, ErrExpired) {
		t.Fatalf("at expiry: %v, want ErrExpired", err)
	}
	if n, err := m.DeleteExpired(clk.Now()); n != 1 || err != nil {
		t.Fatalf("DeleteExpired = %d, %v", n, err)
	}
	if _, _, err := m.Authenticate(tok, clk.Now()); !errors.Is(err, ErrUnknown) {
		t.Fatalf("after cleanup: %v, want ErrUnknown", err)
	}
	if _, _, err := m.Create(0, "", []string{"system:masters"}); !errors.Is(err, ErrBadGroup) {
		t.Fatalf("extra group system:masters: %v, want ErrBadGroup", err)
	}
}

// TestAuthenticateRemembersOnlyWhileUnchanged checks that a remembered
// token answers as a fresh check would: after changes to its record,
// deletion and expiry, with other secrets for its ID, and with the
// caller changing the groups it got.
func TestAuthenticateRemembersOnlyWhileUnchanged(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	clk := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	m := &Manager{Store: st, Clock: clk}
	tok, info, err := m.Create(time.Hour, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		user, groups, err := m.Authenticate(tok, clk.Now())
		if err != nil || user != User(info.ID) || len(groups) != 1 || groups[0] != "system:bootstrappers" {
			t.Fatalf("authenticate = %q %q %v", user, groups, err)
		}
		groups[0] = "system:masters" // must not leak into the next answer
		_ = append(groups, "system:masters")
	}
	if _, _, err := m.Authenticate(info.ID+".0123456789abcdef", clk.Now()); !errors.Is(err, ErrUnknown) {
		t.Errorf("other secret for a remembered ID: %v, want ErrUnknown", err)
	}

	// A changed record (here: an extra group) is read again.
	info.ExtraGroups = []string{"system:bootstrappers:pool-b"}
	if _, err := st.Update(Kind, info.ID, func(store.Object, uint64) ([]byte, error) { return json.Marshal(info) }); err != nil {
		t.Fatal(err)
	}
	if _, groups, err := m.Authenticate(tok, clk.Now()); err != nil || len(groups) != 2 || groups[1] != "system:bootstrappers:pool-b" {
		t.Errorf("after an update: %q, %v", groups, err)
	}

	clk.Advance(time.Hour)
	if _, _, err := m.Authenticate(tok, clk.Now()); !errors.Is(err, ErrExpired) {
		t.Errorf("remembered token at expiry: %v, want ErrExpired", err)
	}

	tok2, info2, _ := m.Create(0, "", nil)
	if _, _, err := m.Authenticate(tok2, clk.Now()); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(info2.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Authenticate(tok2, clk.Now()); !errors.Is(err, ErrUnknown) {
		t.Errorf("remembered token after deletion: %v, want ErrUnknown", err)
	}
}
