package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/internal/atomicfile"
)

// Result files of the last reload, for `nodetrust agent|metadata reload`:
// in $RUNTIME_DIRECTORY (/run/nodetrust under systemd), else (agent only)
// in the state folder.
const (
	agentReloadFile    = "agent-reload.json"
	metadataReloadFile = "metadata-reload.json"
)

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

// reloadResultPath is name in $RUNTIME_DIRECTORY, else in dir; "" when
// both are empty.
func reloadResultPath(dir, name string) string {
	if rd := os.Getenv("RUNTIME_DIRECTORY"); rd != "" {
		dir = strings.Split(rd, ":")[0]
	}
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, name)
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

// signalAndWait sends SIGHUP to pid and waits until the result file at
// path reports a newer reload of that pid; a rejected configuration is an
// error carrying the process's own message.
func signalAndWait(ctx context.Context, env *cmdEnv, what string, pid int, path string, timeout time.Duration) error {
	if pid <= 1 {
		return fmt.Errorf("%w: --pid is required (the %s's process id, $MAINPID in a unit)", errUsage, what)
	}
	if path == "" {
		return fmt.Errorf("%w: RUNTIME_DIRECTORY is unset: run it as ExecReload of the unit, which sets it", errUsage)
	}
	gen := 0
	if r, err := readReloadResult(path); err == nil && r.PID == pid {
		gen = r.Generation
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("signal %s pid %d: %w", what, pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		r, err := readReloadResult(path)
		if err == nil && r.PID == pid && r.Generation > gen {
			if !r.OK {
				return fmt.Errorf("the %s rejected the new configuration and keeps running on the old one: %s", what, r.Error)
			}
			fmt.Fprintf(env.stdout, "%s %d reloaded; applied: %s; need a restart: %s\n", what, pid, list(r.Applied), list(r.NeedRestart))
			return nil
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("%s pid %d exited during the reload (see its log)", what, pid)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s pid %d did not report a reload in %s (%s): is it nodetrust %s, with the same RUNTIME_DIRECTORY?", what, pid, timeout, path, what)
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
