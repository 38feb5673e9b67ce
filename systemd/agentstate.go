package systemd

import (
	"fmt"
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/agent"
)

// AgentReady reports whether the agent may tell systemd READY=1: every
// credential holds an unexpired certificate and, when tunnel servers are
// configured, at least one tunnel is up so the control plane can reach
// the node. One is enough: a node must not fail to start because one of
// several control-plane replicas is down (STATUS says how many are up).
func AgentReady(l agent.Lifecycle) bool {
	if len(l.Credentials) == 0 {
		return false
	}
	for _, c := range l.Credentials {
		if !c.Valid {
			return false
		}
	}
	return l.TunnelServers == 0 || l.TunnelsUp > 0
}

// AgentStatus says in one line what the agent is doing at now, for
// STATUS= (shown by systemctl status).
func AgentStatus(l agent.Lifecycle, now time.Time) string {
	if len(l.Credentials) == 0 {
		return "starting"
	}
	client := l.Credentials[0]
	if !client.Valid {
		return "bootstrapping: " + progress(l, client, now, "reading the bootstrap credential from metadata and filing a CSR")
	}
	for _, c := range l.Credentials[1:] {
		if !c.Valid {
			return fmt.Sprintf("obtaining the %s certificate: %s", c.Name, progress(l, c, now, "filing a CSR"))
		}
	}
	for _, c := range l.Credentials {
		if !c.Settled {
			return fmt.Sprintf("renewing the %s certificate (valid until %s): %s", c.Name, stamp(c.NotAfter), progress(l, c, now, "filing a CSR"))
		}
	}
	var b strings.Builder
	if AgentReady(l) {
		b.WriteString("ready: ")
	} else {
		b.WriteString("waiting for a tunnel: ")
	}
	for i, c := range l.Credentials {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s cert valid until %s", c.Name, stamp(c.NotAfter))
	}
	switch {
	case l.TunnelServers > 0 && l.TunnelsUp > l.TunnelServers: // replicas behind one address, HA streams
		fmt.Fprintf(&b, ", %d tunnels up to %d servers", l.TunnelsUp, l.TunnelServers)
	case l.TunnelServers > 0:
		fmt.Fprintf(&b, ", %d/%d tunnels up", l.TunnelsUp, l.TunnelServers)
	}
	return b.String()
}

// progress describes an unsettled credential: in flight, or failed and
// waiting to retry.
func progress(l agent.Lifecycle, c agent.CredentialState, now time.Time, doing string) string {
	switch {
	case l.InRound && c.Pending:
		return "waiting for CSR approval"
	case l.InRound:
		return doing
	case c.LastError != "":
		in := max(c.RetryAt.Sub(now), 0).Round(time.Second)
		return fmt.Sprintf("attempt %d failed, retrying in %s: %s", c.Failures, in, clip(c.LastError, 160))
	}
	return "about to start"
}

func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }

func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// AgentAlive reports whether the agent's main loop is alive at now, for
// WATCHDOG=1: a round (obtaining certificates) has run no longer than its
// limit (every CSR wait plus a margin), or, between rounds, the loop ran
// within two heartbeats. When it is not, reason says why.
func AgentAlive(l agent.Lifecycle, now time.Time) (ok bool, reason string) {
	switch {
	case l.InRound:
		if d := now.Sub(l.RoundStarted); d > l.RoundLimit {
			return false, fmt.Sprintf("a round of certificate checks has run for %s, longer than its limit %s", d.Round(time.Second), l.RoundLimit)
		}
	case l.Heartbeat > 0 && !l.LastBeat.IsZero():
		if d := now.Sub(l.LastBeat); d > 2*l.Heartbeat {
			return false, fmt.Sprintf("the main loop last ran %s ago (heartbeat every %s)", d.Round(time.Second), l.Heartbeat)
		}
	}
	return true, ""
}
