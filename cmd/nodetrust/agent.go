package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/systemd"
)

// Exit codes of `nodetrust agent`.
const (
	exitNotReady = 1 // --once: the credentials could not be obtained in time
	exitConfig   = 3 // the configuration file is missing or invalid
)

func init() {
	register(&command{
		name:    "agent",
		summary: "Run the node agent: bootstrap from metadata, obtain and rotate the node's certificates.",
		usage: "[--config FILE] [--once [--timeout D]]  |  reload --pid PID  |  configured [--config FILE]\n\n" +
			"Exit codes: 0 success (--once: credentials valid), 1 --once could not obtain them before --timeout\n" +
			"or the agent failed, 2 bad command line, 3 bad configuration file.\n" +
			"Under systemd (Type=notify) it sends READY=1 once its credentials are valid and a tunnel is up,\n" +
			"STATUS= lines, watchdog pings; SIGHUP re-reads --config ('nodetrust agent reload --help').",
		example: "nodetrust agent --config /etc/nodetrust/agent.yaml --once --timeout 2m",
		run:     runAgent,
	})
}

func runAgent(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) > 0 && args[0] == "reload" {
		return runAgentReload(ctx, env, args[1:])
	}
	if len(args) > 0 && args[0] == "configured" {
		return runAgentConfigured(ctx, env, args[1:])
	}
	fs := newFlagSet(commands["agent"], env)
	cfgPath := fs.String("config", "/etc/nodetrust/agent.yaml", "agent configuration file")
	once := fs.Bool("once", false, "bootstrap or renew if needed, then exit")
	timeout := fs.Duration("timeout", 5*time.Minute, "with --once: how long to keep trying")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	log, err := newLogger(env.stderr, *logLevel)
	if err != nil {
		return err
	}
	hup, unsubscribe := subscribeHUP() // before anything slow: an early SIGHUP must not kill the agent
	defer unsubscribe()
	cfg, err := agent.LoadConfig(*cfgPath)
	if err != nil {
		return &exitError{exitConfig, err}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a, err := agent.New(cfg, agent.Options{Logger: log, Registerer: reg})
	if err != nil {
		return &exitError{exitConfig, err}
	}
	if *once {
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if err := a.Once(ctx); err != nil {
			return &exitError{exitNotReady, err}
		}
		fmt.Fprintln(env.stdout, "credentials valid; see 'nodetrust status'")
		return nil
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return &exitError{exitConfig, fmt.Errorf("metricsListen: %w", err)}
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", a.ServeHealth)
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			<-ctx.Done()
			hs.Close()
		})
		wg.Go(func() {
			if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		})
		log.Info("serving /metrics and /healthz", "addr", ln.Addr().String())
	}
	// systemd: READY, STATUS, watchdog, reload (all no-ops without NOTIFY_SOCKET).
	sup := systemd.NewSupervisor(systemd.FromEnv(log), a, nil, log)
	a.OnHeartbeat(sup.Heartbeat(), sup.Poke)
	wg.Go(func() { sup.Run(ctx) })
	wg.Go(func() {
		serveAgentReloads(ctx, hup, a, sup, *cfgPath, reloadResultPath(cfg.StateDir, agentReloadFile), log)
	})
	err = a.Run(ctx)
	cancel()
	return err
}
