package systemd

import (
	"log/slog"
	"slices"
	"strings"
	"unicode"
)

// Redacted replaces the value of an attribute whose key names a secret.
const Redacted = "[redacted]"

// secretWords are words that, anywhere in an attribute key
// ("bootstrap_token", "caKey", "password"), mark its value as secret.
var secretWords = []string{"token", "secret", "password", "passwd", "passphrase", "key", "privatekey", "apikey", "bearer", "authorization", "cookie"}

// SecretKey reports whether an attribute key names a secret: one of its
// words (split at non-letters and at lower-to-upper case changes) is in
// secretWords. It is defence in depth: nodetrust never logs a secret on
// purpose.
func SecretKey(key string) bool {
	var words []string
	var cur []rune
	prev := rune(0)
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	for _, r := range key {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
		case unicode.IsUpper(r) && unicode.IsLower(prev):
			flush()
			cur = append(cur, r)
		default:
			cur = append(cur, r)
		}
		prev = r
	}
	flush()
	return slices.ContainsFunc(words, func(w string) bool { return slices.Contains(secretWords, w) })
}

// RedactAttr is a slog.HandlerOptions.ReplaceAttr that redacts the values
// of attributes whose keys name secrets.
func RedactAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindGroup && SecretKey(a.Key) {
		return slog.String(a.Key, Redacted)
	}
	return a
}
