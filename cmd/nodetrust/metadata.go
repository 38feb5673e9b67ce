package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/systemd"
)

func init() {
	register(&command{
		name:    "metadata",
		summary: "Serve GCE-compatible instance metadata, concealing bootstrap secrets from pods.",
		usage: "--data FILE [--listen ADDR] [--metrics-listen ADDR] [flags]  |  reload --pid PID\n\n" +
			"Socket activation: sockets passed by systemd (LISTEN_FDS; FileDescriptorName=metadata or unnamed)\n" +
			"are served instead of --listen. Under Type=notify it sends READY=1 when serving, and\n" +
			"RELOADING=1 ... READY=1 around the reload a SIGHUP triggers.",
		example: "nodetrust metadata --listen 127.0.0.1:8080 --data /etc/nodetrust/metadata.yaml --metrics-listen 127.0.0.1:9101",
		run:     runMetadata,
	})
}

func runMetadata(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) > 0 && args[0] == "reload" {
		return runMetadataReload(ctx, env, args[1:])
	}
	fs := newFlagSet(commands["metadata"], env)
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve metadata on (169.254.169.254:80 on a real node)")
	dataPath := fs.String("data", "", "YAML data file: project, instances (with hostAddresses and podRanges), concealedAttributes; reloaded on change and SIGHUP")
	metricsListen := fs.String("metrics-listen", "", "address for Prometheus /metrics (off when empty)")
	var hosts stringList
	fs.Var(&hosts, "allowed-host", "extra Host header name to accept, e.g. the host in GCE_METADATA_HOST (repeatable)")
	perCaller := fs.Int("max-watchers-per-caller", 256, "wait_for_change requests one address may have waiting")
	maxWatchers := fs.Int("max-watchers", 20000, "wait_for_change requests that may wait in all")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	if *dataPath == "" {
		return fmt.Errorf("%w: --data is required", errUsage)
	}
	log, err := newLogger(env.stderr, *logLevel)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(*dataPath)
	if err != nil {
		return fmt.Errorf("--data: %w", err)
	}
	data, err := metadata.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", *dataPath, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := metadata.NewServer(metadata.Config{
		Logger:               log,
		Metrics:              metadata.NewMetrics(reg),
		AllowedHosts:         append(hosts, *listen),
		MaxWatchersPerCaller: *perCaller,
		MaxWatchers:          *maxWatchers,
	}, data)
	if err != nil {
		return err
	}
	ln, err := metadataListener(*listen, log)
	if err != nil {
		return err
	}
	var mln net.Listener
	if *metricsListen != "" {
		if mln, err = net.Listen("tcp", *metricsListen); err != nil {
			ln.Close()
			return fmt.Errorf("--metrics-listen: %w", err)
		}
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	trigger := make(chan struct{}, 1)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	d := systemd.FromEnv(log)
	serving := func() string {
		n := 0
		if data := srv.Data(); data != nil {
			n = len(data.Instances)
		}
		return fmt.Sprintf("serving metadata on %s: %d instances", ln.Addr(), n)
	}
	wg.Go(func() { metadataReloads(ctx, hup, trigger, d, reg, *dataPath, serving, log) })
	rl := &metadata.Reloader{Path: *dataPath, Server: srv, Logger: log, Trigger: trigger, Loaded: raw}
	wg.Go(func() { errc <- rl.Run(ctx) })
	if mln != nil {
		ms := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			<-ctx.Done()
			ms.Close()
		})
		wg.Go(func() {
			if err := ms.Serve(mln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
				cancel()
			}
		})
		log.Info("serving metrics", "addr", mln.Addr().String())
	}
	log.Info("serving metadata", "addr", ln.Addr().String(), "data", *dataPath, "instances", len(data.Instances))
	d.Ready(serving())
	err = srv.Run(ctx, ln)
	d.Stopping()
	cancel()
	wg.Wait()
	close(errc)
	for e := range errc {
		if err == nil && e != nil {
			err = e
		}
	}
	return err
}
