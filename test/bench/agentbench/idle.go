package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nodetrust/nodetrust/test/bench/benchkit"
	"github.com/nodetrust/nodetrust/test/harness"
)

// idleResult is the running agent's and the baseline's use of memory and
// CPU while idle.
type idleResult struct {
	toCreds     time.Duration // from exec until the credentials file appeared
	agent, base idleProc
	window      time.Duration
	foreign     float64 // CPUs other processes used in the window
	stopTook    time.Duration
	stopErr     error
	quiet       float64 // CPUs other processes used just before
}

type idleProc struct {
	start, end benchkit.Mem // at the start and the end of the window
	maxRSS     int64        // over the window, sampled each second
	cpu        float64      // CPUs over the window
}

// benchIdle starts `nodetrust agent` (long-running, with its metrics
// listener) and the baseline sleeper together, waits for the agent's
// credentials, then watches both for o.idle.
func benchIdle(o options, env *harness.Env) (*idleResult, error) {
	dir := filepath.Join(o.dir, "idle")
	quiet := benchkit.WaitQuiet(o.quiet)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	metrics := ln.Addr().String()
	ln.Close()
	cfg, state, err := writeConfig(dir, env, metrics)
	if err != nil {
		return nil, err
	}
	ag, err := benchkit.StartChild("nodetrust agent", filepath.Join(dir, "agent.log"), o.bin, "agent", "--config", cfg)
	if err != nil {
		return nil, err
	}
	defer ag.Stop()
	base, err := benchkit.StartChild("baseline sleep", filepath.Join(dir, "baseline.log"), o.baseline, "sleep")
	if err != nil {
		return nil, err
	}
	defer base.Stop()

	r := &idleResult{quiet: quiet}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(state, credFile)); err == nil {
			r.toCreds = time.Since(ag.Started())
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		select {
		case <-ag.Exited():
			return nil, fmt.Errorf("agent exited: %v\n%s", ag.Err(), ag.LogTail())
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no credentials after 30s\n%s", ag.LogTail())
		}
	}
	if err := checkCredentials(state, env.Nodes[0]); err != nil {
		return nil, err
	}
	// The file appears just before the agent writes its kubeconfig and status
	// and returns to its loop; /healthz answering 200 means it is there.
	if err := waitHealthy("http://"+metrics+"/healthz", 10*time.Second); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, ag.LogTail())
	}

	pids := []int{ag.PID(), base.PID()}
	procs := []*idleProc{&r.agent, &r.base}
	for i, p := range pids {
		if procs[i].start, err = benchkit.ReadMem(p); err != nil {
			return nil, err
		}
	}
	c0 := benchkit.SampleCPU(pids...)
	end := c0.At.Add(o.idle)
	for time.Now().Before(end) {
		time.Sleep(min(time.Second, time.Until(end)))
		for i, p := range pids {
			m, err := benchkit.ReadMem(p)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", []string{"agent", "baseline"}[i], err)
			}
			procs[i].maxRSS = max(procs[i].maxRSS, m.RSS)
			procs[i].end = m
		}
	}
	u := benchkit.CPUBetween(c0, benchkit.SampleCPU(pids...))
	r.window = o.idle
	r.agent.cpu, r.base.cpu, r.foreign = u.Procs[0], u.Procs[1], u.Foreign
	r.stopTook, r.stopErr = ag.Stop()
	return r, nil
}

func waitHealthy(url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	cl := &http.Client{Timeout: time.Second}
	for {
		resp, err := cl.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cl.CloseIdleConnections()
				return nil
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent /healthz not OK after %v: %v", limit, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
