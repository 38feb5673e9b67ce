package bootstrap

import (
	"errors"
	"fmt"
	"strings"
)

// ErrTokenFormat is wrapped by ValidateToken's errors.
var ErrTokenFormat = errors.New("bootstrap token not in format [a-z0-9]{6}.[a-z0-9]{16}")

// ValidateToken checks that s is a kubeadm bootstrap token: a 6-character
// token ID, a dot, a 16-character token secret, both of [a-z0-9]. The
// error says what is wrong (length, missing dot, which part has a
// character outside [a-z0-9]) without quoting s.
func ValidateToken(s string) error {
	id, secret, ok := strings.Cut(s, ".")
	if !ok {
		return fmt.Errorf("%w: no dot (%d characters)", ErrTokenFormat, len(s))
	}
	if len(id) != 6 {
		return fmt.Errorf("%w: token ID has %d characters, want 6", ErrTokenFormat, len(id))
	}
	if len(secret) != 16 {
		return fmt.Errorf("%w: token secret has %d characters, want 16", ErrTokenFormat, len(secret))
	}
	if !lowerAlnum(id) {
		return fmt.Errorf("%w: token ID has a character outside [a-z0-9]", ErrTokenFormat)
	}
	if !lowerAlnum(secret) {
		return fmt.Errorf("%w: token secret has a character outside [a-z0-9]", ErrTokenFormat)
	}
	return nil
}

func lowerAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
