package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"gopkg.in/yaml.v3"
)

var agentConfiguredCmd = &command{
	name:    "agent configured",
	summary: "Tell whether the agent has been configured yet (ExecCondition of nodetrust-agent.service).",
	usage: "[--config FILE]\n\n" +
		"Exit codes: 0 configured (\"server\" is set: the agent starts, and any other mistake in the file\n" +
		"is the agent's to report), 1 not configured yet (no file, or \"server\" unset as the package ships it:\n" +
		"systemd skips the start instead of failing), 2 bad command line.",
	example: "nodetrust agent configured --config /etc/nodetrust/agent.yaml",
}

// runAgentConfigured lets a freshly installed, enabled agent be skipped at
// boot, not failed, until someone sets "server" in its file.
func runAgentConfigured(_ context.Context, env *cmdEnv, args []string) error {
	fset := newFlagSet(agentConfiguredCmd, env)
	cfgPath := fset.String("config", "/etc/nodetrust/agent.yaml", "agent configuration file")
	if err := parseFlags(fset, env, args); err != nil {
		return err
	}
	b, err := os.ReadFile(*cfgPath)
	if errors.Is(err, fs.ErrNotExist) {
		return &exitError{1, fmt.Errorf("not configured yet: %s does not exist; write it (see nodetrust-agent.yaml(5)) and start the agent", *cfgPath)}
	}
	if err != nil {
		return nil // the agent itself reports an unreadable file, naming it
	}
	var head struct {
		Server string `yaml:"server"`
	}
	if yaml.Unmarshal(b, &head) == nil && head.Server == "" {
		return &exitError{1, fmt.Errorf("not configured yet: set \"server\" in %s, then 'systemctl start nodetrust-agent'", *cfgPath)}
	}
	fmt.Fprintf(env.stdout, "%s is configured\n", *cfgPath)
	return nil
}
