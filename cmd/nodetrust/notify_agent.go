package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/internal/atomicfile"
	"github.com/nodetrust/nodetrust/systemd"
)

// reloadResultFile is where the agent says how its last reload went, for
// `nodetrust agent reload`: in $RUNTIME_DIRECTORY (/run/nodetrust under
// systemd), else in the state folder.
const reloadResultFile = "agent-reload.json"

// reloadResult is the content of reloadResultFile.
type reloadResult struct {
	PID         int       `json:"pid"`
	Generation  int       `json:"generation"` // reloads handled by this process
	OK          bool      `json:"ok"`
	Error       string    `json:"error,omitempty"`
	Applied     []string  `json:"applied,omitempty"`
	NeedRestart []string  `json:"needRestart,omitempty"`
	At          time.Time `json:"at"`
}

func reloadResultPath(stateDir string) string {
	if rd := os.Getenv("RUNTIME_DIRECTORY"); rd != "" {
		return filepath.Join(strings.Split(rd, ":")[0], reloadResultFile)
	}
	return filepath.Join(stateDir, reloadResultFile)
}

func writeReloadResult(path string, r *reloadResult) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(path, append(b, '\n'), 0o644)
}

func readReloadResult(path string) (*reloadResult, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r reloadResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

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
		"Sends SIGHUP to PID and waits for the agent's answer in $RUNTIME_DIRECTORY/" + reloadResultFile + "\n" +
		"(without RUNTIME_DIRECTORY: STATE_DIR/" + reloadResultFile + ").\n" +
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
	if *pid <= 1 {
		return fmt.Errorf("%w: --pid is required (the agent's process id, $MAINPID in a unit)", errUsage)
	}
	path := reloadResultPath(*stateDir)
	gen := 0
	if r, err := readReloadResult(path); err == nil && r.PID == *pid {
		gen = r.Generation
	}
	if err := syscall.Kill(*pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("signal agent pid %d: %w", *pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		r, err := readReloadResult(path)
		if err == nil && r.PID == *pid && r.Generation > gen {
			if !r.OK {
				return fmt.Errorf("the agent rejected the new configuration and keeps running on the old one: %s", r.Error)
			}
			fmt.Fprintf(env.stdout, "agent %d reloaded; applied: %s; need a restart: %s\n", *pid, list(r.Applied), list(r.NeedRestart))
			return nil
		}
		if err := syscall.Kill(*pid, 0); errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("agent pid %d exited during the reload (see its log)", *pid)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent pid %d did not report a reload in %s (%s): is it a nodetrust agent, and is RUNTIME_DIRECTORY or --state-dir the same as its own?", *pid, *timeout, path)
		case <-tick.C:
		}
	}
}

func list(s []string) string {
	if len(s) == 0 {
		return "nothing"
	}
	return strings.Join(s, ", ")
}
