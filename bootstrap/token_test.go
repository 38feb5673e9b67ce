package bootstrap_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/bootstrap"
)

func TestValidateToken(t *testing.T) {
	tests := []struct {
		in      string
		errText string // "" means valid
	}{
		{"abcdef.0123456789abcdef", ""},
		{"07401b.f395accd246ae52d", ""},
		{"", "no dot"},
		{"abcdef0123456789abcdef", "no dot"},
		{"abcde.0123456789abcdef", "token ID has 5 characters"},
		{"abcdef.0123456789abcde", "token secret has 15 characters"},
		{"abcdef.0123456789abcdef0", "token secret has 17 characters"},
		{"ABCDEF.0123456789abcdef", "token ID has a character"},
		{"abcdef.0123456789abcdeF", "token secret has a character"},
		{"abcdef.0123456789abcd-f", "token secret has a character"},
		{"abcdef.01234567.9abcdef", "token secret has a character"},
		{" abcdef.0123456789abcdef", "token ID has 7 characters"},
	}
	for _, tt := range tests {
		err := bootstrap.ValidateToken(tt.in)
		if tt.errText == "" {
			require.NoError(t, err, "%q", tt.in)
			continue
		}
		require.ErrorIs(t, err, bootstrap.ErrTokenFormat, "%q", tt.in)
		require.Contains(t, err.Error(), tt.errText, "%q", tt.in)
		if len(tt.in) > 7 {
			require.NotContains(t, err.Error(), tt.in[7:], "error quotes the secret")
		}
	}
}

func TestParseKubeEnv(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]string
		errText string
	}{
		{name: "empty", in: "", want: map[string]string{}},
		{name: "null document", in: "~\n", want: map[string]string{}},
		{
			name: "scalars as written",
			in:   "A: x\nB: \"y z\"\nNUM: 42\nBOOL: true\nNIL:\nLIST: [1, 2]\nMAP: {a: b}\n",
			want: map[string]string{"A": "x", "B": "y z", "NUM": "42", "BOOL": "true", "NIL": ""},
		},
		{name: "alias", in: "A: &x v\nB: *x\n", want: map[string]string{"A": "v", "B": "v"}},
		{name: "not a map", in: "- a\n- b\n", errText: "not a YAML map"},
		{name: "scalar", in: "just text\n", errText: "not a YAML map"},
		{name: "duplicate key", in: "A: x\nA: y\n", errText: "key A defined twice"},
		{name: "syntax", in: "A: x\n B: [\n", errText: "not YAML"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := bootstrap.ParseKubeEnv([]byte(tt.in))
			if tt.errText != "" {
				require.ErrorContains(t, err, tt.errText)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestSPKIPin(t *testing.T) {
	p := newPKI(t, "x")
	pin := bootstrap.SPKIPin(p.caCert)
	require.Regexp(t, `^sha256:[0-9a-f]{64}$`, pin)
	require.NotEqual(t, pin, bootstrap.SPKIPin(newPKI(t, "y").caCert))
}
