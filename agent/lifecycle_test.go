package agent_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
	"github.com/nodetrust/nodetrust/test/harness"
)

func TestConfigChanges(t *testing.T) {
	const base = "server: https://10.0.0.2:6443\n"
	tests := []struct {
		name string
		old  string
		new  string
		want []string
	}{
		{"same", "", "", nil},
		{"defaults spelled out are no change", "", "checkInterval: 1m\nstateDir: /var/lib/nodetrust\n", nil},
		{"live key", "", "checkInterval: 30s\n", []string{"checkInterval"}},
		{"nested keys", "serving: {enabled: true}\n", "serving: {enabled: true, ips: [10.0.0.7], dnsNames: [n7]}\n", []string{"serving.dnsNames", "serving.ips"}},
		{"list order matters", "tunnel: {servers: [a:1, b:1]}\n", "tunnel: {servers: [b:1, a:1]}\n", []string{"tunnel.servers"}},
		{"node name", "", "nodeName: n2\n", []string{"nodeName"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := agent.ParseConfig([]byte(base + tt.old))
			require.NoError(t, err)
			n, err := agent.ParseConfig([]byte(base + tt.new))
			require.NoError(t, err)
			assert.Equal(t, tt.want, agent.ConfigChanges(o, n))
		})
	}
}

// ready waits until the agent's client certificate is valid and settled.
func waitSettled(t *testing.T, a *agent.Agent) {
	t.Helper()
	require.Eventually(t, func() bool {
		l := a.Lifecycle()
		return len(l.Credentials) > 0 && l.Credentials[0].Valid && l.Credentials[0].Settled && !l.InRound
	}, 30*time.Second, 10*time.Millisecond)
}

func TestHeartbeatWakesRunBetweenChecks(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	n := newNode(t, env, nodeOpts{})
	beats := make(chan struct{}, 1)
	n.a.OnHeartbeat(5*time.Second, func() {
		select {
		case beats <- struct{}{}:
		default:
		}
	})
	l := n.a.Lifecycle()
	assert.Equal(t, 5*time.Second, l.Heartbeat)
	assert.Zero(t, l.TunnelServers)
	assert.Equal(t, 20*time.Minute, l.RoundLimit, "one credential: csrTimeout plus the margin")
	stop := n.run()
	defer stop()
	waitSettled(t, n.a)
	<-beats
	before := n.a.Lifecycle().LastBeat
	start := n.clk.Now()
	// checkInterval is 1m: only the heartbeat wakes the loop within it.
	require.Eventually(t, func() bool {
		n.clk.Advance(time.Second)
		return n.a.Lifecycle().LastBeat.Sub(before) >= 5*time.Second
	}, 30*time.Second, 5*time.Millisecond)
	assert.Less(t, n.clk.Now().Sub(start), 30*time.Second)
	assert.Equal(t, 1, n.csrCount(), "a heartbeat is not a round: nothing requested")
}

func TestReloadAppliesLiveKeysAndRechecks(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	n := newNode(t, env, nodeOpts{})
	stop := n.run()
	defer stop()
	waitSettled(t, n.a)

	cfg := *n.cfg
	cfg.CheckInterval = agent.Duration(2 * time.Minute)
	cfg.Tunnel.ServerName = "cp.example"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := n.a.Reload(ctx, &cfg)
	require.NoError(t, err)
	assert.Equal(t, []string{"checkInterval"}, r.Applied)
	assert.Equal(t, []string{"tunnel.serverName"}, r.NeedRestart)
	assert.Equal(t, 1, n.a.Lifecycle().Reloads)
	waitSettled(t, n.a)
	assert.Equal(t, 1, n.csrCount(), "a valid certificate is kept across a reload")
}

func TestReloadWithoutRunTimesOut(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	n := newNode(t, env, nodeOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := n.a.Reload(ctx, n.cfg)
	require.ErrorIs(t, err, agent.ErrNotRunning)
}

// TestReloadInterruptsARound: a reload during a long round (here a
// metadata server that accepts and never answers) is taken at once.
func TestReloadInterruptsARound(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	md := mdclient.New(mdclient.Config{Host: ln.Addr().String(), RequestTimeout: 2 * time.Minute, RetryMax: -1})
	n := newNode(t, env, nodeOpts{md: md})
	stop := n.run()
	defer stop()
	require.Eventually(t, func() bool {
		l := n.a.Lifecycle()
		return l.InRound && !l.Credentials[0].Valid
	}, 30*time.Second, 10*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err = n.a.Reload(ctx, n.cfg)
	require.NoError(t, err)
	assert.Less(t, time.Since(start), 20*time.Second, "the reload waited for the hung round")
	assert.Equal(t, 1, n.a.Lifecycle().Reloads)
}
