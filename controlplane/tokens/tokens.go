// Package tokens implements bootstrap tokens in the kubeadm format
// ("abcdef.0123456789abcdef"): creation, listing, deletion and bearer
// authentication with expiry. Only a SHA-256 of each secret is stored.
package tokens

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// Kind is the store kind of tokens.
const Kind = "bootstraptoken"

// Errors.
var (
	ErrMalformed = errors.New("malformed bootstrap token")
	ErrUnknown   = errors.New("unknown bootstrap token")
	ErrExpired   = errors.New("bootstrap token has expired")
	ErrBadGroup  = errors.New("bad extra group")
)

var (
	tokenRE = regexp.MustCompile(`\A([a-z0-9]{6})\.([a-z0-9]{16})\z`)
	idRE    = regexp.MustCompile(`\A[a-z0-9]{6}\z`)
	groupRE = regexp.MustCompile(`\Asystem:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]\z`)
)

// Token is a stored token, without its secret.
type Token struct {
	ID          string    `json:"id"`
	SecretHash  string    `json:"secretHash"`
	Expires     time.Time `json:"expires,omitzero"` // zero: never
	Description string    `json:"description,omitempty"`
	ExtraGroups []string  `json:"extraGroups,omitempty"`
	Created     time.Time `json:"created"`
}

// Expired reports whether t has expired at now.
func (t *Token) Expired(now time.Time) bool {
	return !t.Expires.IsZero() && !now.Before(t.Expires)
}

// Parse splits a token into its ID and secret.
func Parse(s string) (id, secret string, err error) {
	m := tokenRE.FindStringSubmatch(s)
	if m == nil {
		return "", "", fmt.Errorf("%w: want [a-z0-9]{6}.[a-z0-9]{16}", ErrMalformed)
	}
	return m[1], m[2], nil
}

// ValidID reports whether id has the token-ID format.
func ValidID(id string) bool { return idRE.MatchString(id) }

// User returns the user name a token authenticates as.
func User(id string) string { return csrpolicy.BootstrapPrefix + id }

func hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func random(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)] // 256 % 36 bias is negligible here
	}
	return string(b)
}

// Manager keeps tokens in a store.
type Manager struct {
	Store *store.Store
	Clock clock.Clock

	mu    sync.Mutex
	known map[[sha256.Size]byte]known // guarded by mu; by SHA-256 of the whole token
}

// known is a token that authenticated, as it was then. It stands only as
// long as the stored token is unchanged (same resource version).
type known struct {
	id      string
	rv      uint64
	expires time.Time
	groups  []string
}

// maxKnown bounds the tokens remembered; the memory is cleared when full.
const maxKnown = 4096

// Create makes a token valid for ttl (0: forever) and returns it whole;
// its secret cannot be read back later.
func (m *Manager) Create(ttl time.Duration, description string, extraGroups []string) (string, Token, error) {
	for _, g := range extraGroups {
		if !groupRE.MatchString(g) {
			return "", Token{}, fmt.Errorf("%w %q: must match system:bootstrappers:[a-z0-9:-]*[a-z0-9]", ErrBadGroup, g)
		}
	}
	now := clock.Or(m.Clock).Now().UTC()
	for {
		id, secret := random(6), random(16)
		t := Token{ID: id, SecretHash: hash(secret), Description: description, ExtraGroups: extraGroups, Created: now}
		if ttl > 0 {
			t.Expires = now.Add(ttl)
		}
		_, err := m.Store.Create(Kind, id, func(uint64) ([]byte, error) { return json.Marshal(t) })
		if errors.Is(err, store.ErrExists) {
			continue
		}
		if err != nil {
			return "", Token{}, fmt.Errorf("store token %s: %w", id, err)
		}
		return id + "." + secret, t, nil
	}
}

// Get returns the token with id.
func (m *Manager) Get(id string) (Token, error) {
	o, err := m.Store.Get(Kind, id)
	if errors.Is(err, store.ErrNotFound) {
		return Token{}, fmt.Errorf("token %s: %w", id, ErrUnknown)
	}
	if err != nil {
		return Token{}, err
	}
	var t Token
	if err := json.Unmarshal(o.Data, &t); err != nil {
		return Token{}, fmt.Errorf("decode stored token %s: %w", id, err)
	}
	return t, nil
}

// List returns every token.
func (m *Manager) List() ([]Token, error) {
	objs, _ := m.Store.List(Kind)
	out := make([]Token, 0, len(objs))
	for _, o := range objs {
		var t Token
		if err := json.Unmarshal(o.Data, &t); err != nil {
			return nil, fmt.Errorf("decode stored token %s: %w", o.Name, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// Delete removes a token by ID (or by the whole token).
func (m *Manager) Delete(idOrToken string) error {
	id, _, _ := strings.Cut(idOrToken, ".")
	if _, err := m.Store.Delete(Kind, id, nil); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("token %s: %w", id, ErrUnknown)
		}
		return err
	}
	return nil
}

// Authenticate checks a bearer token at now and returns the user and
// groups it stands for.
//
// A token that authenticated is remembered (by a hash of it) with the
// resource version of its stored record, so that its next uses cost a
// hash and a lookup instead of parsing, decoding and comparing; any
// change to the stored token, or its deletion, ends that.
func (m *Manager) Authenticate(bearer string, now time.Time) (user string, groups []string, err error) {
	key := sha256.Sum256([]byte(bearer))
	m.mu.Lock()
	k, ok := m.known[key]
	m.mu.Unlock()
	if ok {
		if o, err := m.Store.Get(Kind, k.id); err == nil && o.RV == k.rv {
			if !k.expires.IsZero() && !now.Before(k.expires) {
				return "", nil, fmt.Errorf("token %s expired at %s: %w", k.id, k.expires.Format(time.RFC3339), ErrExpired)
			}
			return User(k.id), slices.Clone(k.groups), nil
		}
		m.mu.Lock()
		delete(m.known, key)
		m.mu.Unlock()
	}
	id, secret, err := Parse(bearer)
	if err != nil {
		return "", nil, err
	}
	o, err := m.Store.Get(Kind, id)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil, fmt.Errorf("token %s: %w", id, ErrUnknown)
	}
	if err != nil {
		return "", nil, err
	}
	var t Token
	if err := json.Unmarshal(o.Data, &t); err != nil {
		return "", nil, fmt.Errorf("decode stored token %s: %w", id, err)
	}
	if subtle.ConstantTimeCompare([]byte(hash(secret)), []byte(t.SecretHash)) != 1 {
		return "", nil, fmt.Errorf("token %s: %w", id, ErrUnknown)
	}
	if t.Expired(now) {
		return "", nil, fmt.Errorf("token %s expired at %s: %w", id, t.Expires.Format(time.RFC3339), ErrExpired)
	}
	groups = append([]string{csrpolicy.BootstrapGroup}, t.ExtraGroups...)
	m.mu.Lock()
	if m.known == nil || len(m.known) >= maxKnown {
		m.known = map[[sha256.Size]byte]known{}
	}
	m.known[key] = known{id: id, rv: o.RV, expires: t.Expires, groups: groups}
	m.mu.Unlock()
	return User(id), slices.Clone(groups), nil
}

// DeleteExpired removes tokens expired at now and returns how many.
func (m *Manager) DeleteExpired(now time.Time) (int, error) {
	ts, err := m.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range ts {
		if t.Expired(now) {
			if _, err := m.Store.Delete(Kind, t.ID, nil); err != nil && !errors.Is(err, store.ErrNotFound) {
				return n, err
			}
			n++
		}
	}
	return n, nil
}
