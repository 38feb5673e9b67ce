package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"time"

	"github.com/nodetrust/nodetrust/agent"
)

func init() {
	register(&command{
		name:    "status",
		summary: "Show the node agent's identity, issuer, validity, next rotation and last error.",
		usage:   "[--config FILE | --state-dir DIR] [--json]",
		example: "nodetrust status --config /etc/nodetrust/agent.yaml",
		run:     runStatus,
	})
}

func runStatus(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(commands["status"], env)
	cfgPath := fs.String("config", "/etc/nodetrust/agent.yaml", "agent configuration file (for its stateDir)")
	stateDir := fs.String("state-dir", "", "the agent's state folder (overrides --config)")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	dir := *stateDir
	if dir == "" {
		cfg, err := agent.LoadConfig(*cfgPath)
		if err != nil {
			return &exitError{exitConfig, err}
		}
		dir = cfg.StateDir
	}
	s, err := agent.ReadStatus(filepath.Join(dir, agent.StatusFile))
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	s.Describe(env.stdout, time.Now())
	return nil
}
