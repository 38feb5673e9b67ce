package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/harness"
)

func TestAgentOnceThenStatus(t *testing.T) {
	env := harness.Start(t, harness.Options{Clock: clock.Real{}})
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	body := "server: " + env.APIURL + "\nstateDir: " + state + "\nmetadata:\n  host: " + env.MDAddr + "\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, out, errOut := run(t, ctx, "agent", "--config", cfg, "--once", "--timeout", "30s")
	if code != 0 {
		t.Fatalf("agent --once exited %d: %s", code, errOut)
	}
	if strings.Contains(errOut, env.Token[7:]) {
		t.Fatal("the bootstrap token's secret was logged")
	}
	if !strings.Contains(out, "credentials valid") {
		t.Errorf("agent --once said %q", out)
	}

	code, out, errOut = run(t, ctx, "status", "--config", cfg)
	if code != 0 {
		t.Fatalf("status exited %d: %s", code, errOut)
	}
	for _, want := range []string{"node node-1: healthy", "client certificate: valid", "system:node:node-1", "next rotation", "last error    none"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = run(t, ctx, "status", "--state-dir", state, "--json")
	var s agent.Status
	if code != 0 || json.Unmarshal([]byte(out), &s) != nil || !s.Healthy || len(s.Credentials) != 1 {
		t.Fatalf("status --json: exit %d, %s", code, out)
	}
}

func TestAgentExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("server: http://insecure\n"), 0o600)
	unreachable := filepath.Join(dir, "unreachable.yaml")
	os.WriteFile(unreachable, []byte("server: https://127.0.0.1:1\nstateDir: "+filepath.Join(dir, "s")+"\nmetadata: {host: '127.0.0.1:1'}\n"), 0o600)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"missing config", []string{"agent", "--config", filepath.Join(dir, "none.yaml"), "--once"}, 3, "none.yaml"},
		{"invalid config names file and key", []string{"agent", "--config", bad, "--once"}, 3, "server"},
		{"not ready in time", []string{"agent", "--config", unreachable, "--once", "--timeout", "300ms"}, 1, "credentials not ready"},
		{"status without agent", []string{"status", "--state-dir", filepath.Join(dir, "nothing")}, 1, "is the agent running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := run(t, context.Background(), tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", code, tt.code, errOut, tt.want)
			}
		})
	}
}
