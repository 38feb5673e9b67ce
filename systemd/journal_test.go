package systemd_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/systemd"
)

type entry struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

type journalRec struct {
	mu      sync.Mutex
	entries []entry
}

func (j *journalRec) send(msg string, pri journal.Priority, fields map[string]string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, entry{msg, pri, fields})
	return nil
}

func TestFieldName(t *testing.T) {
	tests := []struct{ key, want string }{
		{"credential", "CREDENTIAL"},
		{"retry_in", "RETRY_IN"},
		{"notAfter", "NOT_AFTER"},
		{"tunnel.server", "TUNNEL_SERVER"},
		{"state-dir", "STATE_DIR"},
		{"_private", "PRIVATE"},
		{"9lives", "NODETRUST_9LIVES"},
		{"message", "NODETRUST_MESSAGE"},
		{"priority", "NODETRUST_PRIORITY"},
		{"é", "NODETRUST_"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, systemd.FieldName(tt.key), tt.key)
	}
}

func TestSecretKey(t *testing.T) {
	for _, k := range []string{"token", "bootstrap_token", "bootstrapToken", "caKey", "key", "password", "client-secret", "Authorization", "apiKey"} {
		assert.True(t, systemd.SecretKey(k), k)
	}
	for _, k := range []string{"credential", "keys", "monkey", "tokens_total", "server", "err", "subject", "reason"} {
		assert.False(t, systemd.SecretKey(k), k)
	}
}

const secret = "abcdef.0123456789abcdef"

func TestJournalHandlerFieldsAndRedaction(t *testing.T) {
	j := &journalRec{}
	log := slog.New(systemd.NewJournalHandler(slog.LevelInfo, j.send))
	log = log.With("component", "tunnel", "token", secret)
	log.Debug("not sent")
	log.Info("certificate obtained", "credential", "client", "not_after", "2026-11-29", slog.Group("peer", "addr", "10.0.0.2:8132", "password", secret))
	log.WithGroup("csr").Error("denied", "name", "csr-1", "bootstrapToken", secret, "message", "by admin")
	log.Warn("warned")
	require.Len(t, j.entries, 3)

	e := j.entries[0]
	assert.Equal(t, journal.PriInfo, e.pri)
	assert.Equal(t, "nodetrust", e.fields["SYSLOG_IDENTIFIER"])
	assert.Equal(t, "client", e.fields["CREDENTIAL"])
	assert.Equal(t, "2026-11-29", e.fields["NOT_AFTER"])
	assert.Equal(t, "tunnel", e.fields["COMPONENT"])
	assert.Equal(t, "10.0.0.2:8132", e.fields["PEER_ADDR"])
	assert.Equal(t, systemd.Redacted, e.fields["TOKEN"])
	assert.Equal(t, systemd.Redacted, e.fields["PEER_PASSWORD"])
	assert.True(t, strings.HasPrefix(e.msg, "certificate obtained "), e.msg)
	assert.Contains(t, e.msg, "credential=client")

	e = j.entries[1]
	assert.Equal(t, journal.PriErr, e.pri)
	assert.Equal(t, "csr-1", e.fields["CSR_NAME"])
	assert.Equal(t, "by admin", e.fields["CSR_MESSAGE"])
	assert.Equal(t, systemd.Redacted, e.fields["CSR_BOOTSTRAP_TOKEN"])
	assert.Equal(t, journal.PriWarning, j.entries[2].pri)

	for _, e := range j.entries {
		assert.NotContains(t, e.msg, secret)
		for k, v := range e.fields {
			assert.NotContains(t, v, secret, k)
			assert.Regexp(t, `^[A-Z][A-Z0-9_]*$`, k)
		}
	}
}

func TestRedactAttrInTextHandler(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{ReplaceAttr: systemd.RedactAttr}))
	log.Info("x", "token", secret, slog.Group("g", "secret", secret), "credential", "client")
	assert.NotContains(t, b.String(), secret)
	assert.Contains(t, b.String(), "token="+systemd.Redacted)
	assert.Contains(t, b.String(), "credential=client")
}
