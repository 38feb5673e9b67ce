package systemd_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/systemd"
)

var t0 = time.Date(2026, 11, 28, 2, 0, 0, 0, time.UTC)

func valid(name string) agent.CredentialState {
	return agent.CredentialState{Name: name, Valid: true, Settled: true, NotAfter: t0.Add(24 * time.Hour), NextRotation: t0.Add(19 * time.Hour)}
}

func TestAgentStatusAndReady(t *testing.T) {
	client := valid("client")
	serving := valid("serving")
	tests := []struct {
		name  string
		l     agent.Lifecycle
		ready bool
		want  string
	}{
		{"nothing yet", agent.Lifecycle{}, false, "starting"},
		{"bootstrapping, reading metadata", agent.Lifecycle{InRound: true, Credentials: []agent.CredentialState{{Name: "client"}}}, false,
			"bootstrapping: reading the bootstrap credential from metadata and filing a CSR"},
		{"bootstrapping, CSR filed", agent.Lifecycle{InRound: true, Credentials: []agent.CredentialState{{Name: "client", Pending: true}}}, false,
			"bootstrapping: waiting for CSR approval"},
		{"bootstrap failed", agent.Lifecycle{Credentials: []agent.CredentialState{{Name: "client", Failures: 3, RetryAt: t0.Add(4 * time.Second),
			LastError: "read bootstrap credential from metadata: connection refused"}}}, false,
			"bootstrapping: attempt 3 failed, retrying in 4s: read bootstrap credential from metadata: connection refused"},
		{"ready, client only", agent.Lifecycle{Credentials: []agent.CredentialState{client}}, true,
			"ready: client cert valid until 2026-11-29 02:00 UTC"},
		{"ready with tunnels", agent.Lifecycle{Credentials: []agent.CredentialState{client, serving}, TunnelServers: 2, TunnelsUp: 2}, true,
			"ready: client cert valid until 2026-11-29 02:00 UTC, serving cert valid until 2026-11-29 02:00 UTC, 2/2 tunnels up"},
		{"one of two tunnels is enough", agent.Lifecycle{Credentials: []agent.CredentialState{client}, TunnelServers: 2, TunnelsUp: 1}, true,
			"ready: client cert valid until 2026-11-29 02:00 UTC, 1/2 tunnels up"},
		{"replicas behind one address", agent.Lifecycle{Credentials: []agent.CredentialState{client}, TunnelServers: 1, TunnelsUp: 3}, true,
			"ready: client cert valid until 2026-11-29 02:00 UTC, 3 tunnels up to 1 servers"},
		{"no tunnel up", agent.Lifecycle{Credentials: []agent.CredentialState{client}, TunnelServers: 1}, false,
			"waiting for a tunnel: client cert valid until 2026-11-29 02:00 UTC, 0/1 tunnels up"},
		{"serving missing", agent.Lifecycle{InRound: true, Credentials: []agent.CredentialState{client, {Name: "serving", Pending: true}}}, false,
			"obtaining the serving certificate: waiting for CSR approval"},
		{"renewing: still ready", agent.Lifecycle{InRound: true, Credentials: []agent.CredentialState{{Name: "client", Valid: true, NotAfter: t0.Add(time.Hour), Pending: true}}}, true,
			"renewing the client certificate (valid until 2026-11-28 03:00 UTC): waiting for CSR approval"},
		{"error text on one line", agent.Lifecycle{Credentials: []agent.CredentialState{{Name: "client", Failures: 1, LastError: "a\nb"}}}, false,
			"bootstrapping: attempt 1 failed, retrying in 0s: a b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, systemd.AgentStatus(tt.l, t0))
			assert.Equal(t, tt.ready, systemd.AgentReady(tt.l))
		})
	}
}

func TestAgentAlive(t *testing.T) {
	tests := []struct {
		name string
		l    agent.Lifecycle
		ok   bool
		why  string
	}{
		{"not started", agent.Lifecycle{Heartbeat: 7 * time.Second}, true, ""},
		{"beat recently", agent.Lifecycle{Heartbeat: 7 * time.Second, LastBeat: t0.Add(-10 * time.Second)}, true, ""},
		{"loop wedged", agent.Lifecycle{Heartbeat: 7 * time.Second, LastBeat: t0.Add(-15 * time.Second)}, false, "main loop last ran 15s ago"},
		{"no heartbeat asked", agent.Lifecycle{LastBeat: t0.Add(-time.Hour)}, true, ""},
		{"long CSR wait within limit", agent.Lifecycle{Heartbeat: 7 * time.Second, LastBeat: t0.Add(-10 * time.Minute), InRound: true,
			RoundStarted: t0.Add(-10 * time.Minute), RoundLimit: 20 * time.Minute}, true, ""},
		{"round past its limit", agent.Lifecycle{Heartbeat: 7 * time.Second, InRound: true, RoundStarted: t0.Add(-21 * time.Minute), RoundLimit: 20 * time.Minute},
			false, "has run for 21m0s, longer than its limit 20m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, why := systemd.AgentAlive(tt.l, t0)
			assert.Equal(t, tt.ok, ok)
			if tt.why == "" {
				assert.Empty(t, why)
			} else {
				assert.Contains(t, why, tt.why)
			}
		})
	}
}
