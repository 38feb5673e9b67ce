package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/systemd"
)

// serveAgentReloads handles SIGHUP until ctx is done: RELOADING=1, read
// cfgPath again, hand it to the agent (a file that does not load leaves
// the old configuration in use, and the error names file, line and key),
// write the result file, READY=1. hup must already be subscribed to
// SIGHUP, so that a signal arriving early is not fatal.
func serveAgentReloads(ctx context.Context, hup <-chan os.Signal, a *agent.Agent, sup *systemd.Supervisor, cfgPath, resultPath string, log *slog.Logger) {
	res := &reloadResult{PID: os.Getpid(), OK: true, At: time.Now()}
	if err := writeReloadResult(resultPath, res); err != nil {
		log.Warn("cannot write the reload result file; 'nodetrust agent reload' will time out", "file", resultPath, "err", err)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		log.Info("reloading configuration", "file", cfgPath)
		var r agent.ReloadResult
		err := sup.Reload(func() error {
			cfg, err := agent.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			r, err = a.Reload(ctx, cfg)
			return err
		})
		res = &reloadResult{PID: os.Getpid(), Generation: res.Generation + 1, OK: err == nil, Applied: r.Applied, NeedRestart: r.NeedRestart, At: time.Now()}
		if err != nil {
			res.Error = err.Error()
			log.Error("configuration rejected; still running on the old one", "file", cfgPath, "err", err)
		}
		if err := writeReloadResult(resultPath, res); err != nil {
			log.Warn("cannot write the reload result file", "file", resultPath, "err", err)
		}
	}
}

// subscribeHUP subscribes to SIGHUP; stop undoes it.
func subscribeHUP() (hup chan os.Signal, stop func()) {
	hup = make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

var agentReloadCmd = &command{
	name:    "agent reload",
	summary: "Make a running agent re-read its configuration, and wait until it has (ExecReload of nodetrust-agent.service).",
	usage: "--pid PID [--state-dir DIR] [--timeout D]\n\n" +
		"Sends SIGHUP to PID and waits for the agent's answer in $RUNTIME_DIRECTORY/" + agentReloadFile + "\n" +
		"(without RUNTIME_DIRECTORY: STATE_DIR/" + agentReloadFile + ").\n" +
		"Exit codes: 0 reloaded, 1 the agent rejected the file (its error is printed) or did not answer in time, 2 bad command line.",
	example: "nodetrust agent reload --pid $MAINPID",
}

func runAgentReload(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(agentReloadCmd, env)
	pid := fs.Int("pid", 0, "process id of the agent (systemd: $MAINPID)")
	stateDir := fs.String("state-dir", "/var/lib/nodetrust", "the agent's stateDir, used when RUNTIME_DIRECTORY is unset")
	timeout := fs.Duration("timeout", 80*time.Second, "how long to wait for the agent")
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	return signalAndWait(ctx, env, "agent", *pid, reloadResultPath(*stateDir, agentReloadFile), *timeout)
}
