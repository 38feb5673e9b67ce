package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/controlplane"
)

// controlplaneSubs are the subcommands of "nodetrust controlplane"; with
// none, it runs the API server.
var controlplaneSubs = map[string]*command{}

func registerCP(c *command) { controlplaneSubs[c.name] = c }

func init() {
	cp := &command{
		name:    "controlplane",
		summary: "Run the control plane API (certificates.k8s.io/v1 CSRs, bootstrap tokens, approver); see the subcommands for init, signer, token, csr, instance and rotate.",
		usage:   "[init|signer|token|csr|instance|rotate] [flags]",
		example: "nodetrust controlplane --data-dir /var/lib/nodetrust-cp --listen 0.0.0.0:6443 --metadata /etc/nodetrust/metadata.yaml",
	}
	cp.run = func(ctx context.Context, env *cmdEnv, args []string) error {
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			sub, ok := controlplaneSubs[args[0]]
			if !ok {
				names := make([]string, 0, len(controlplaneSubs))
				for n := range controlplaneSubs {
					names = append(names, n)
				}
				sort.Strings(names)
				return fmt.Errorf("%w: unknown subcommand %q; want one of %s", errUsage, args[0], strings.Join(names, ", "))
			}
			return sub.run(ctx, env, args[1:])
		}
		return runControlplaneServer(ctx, env, cp, args)
	}
	register(cp)

	registerCP(&command{
		name:    "init",
		summary: "Create the trust roots in a new data folder: cluster CA, etcd CA, API serving and admin certificates, admin kubeconfig.",
		usage:   "--data-dir DIR [--san NAME_OR_IP]... [--server URL]",
		example: "nodetrust controlplane init --data-dir /var/lib/nodetrust-cp --san cp.example.internal --san 10.0.0.2 --server https://10.0.0.2:6443",
		run:     runControlplaneInit,
	})
	registerCP(&command{
		name:    "signer",
		summary: "Run the signer: the only process that reads the cluster CA key; it signs approved CSRs over a UNIX socket.",
		usage:   "--data-dir DIR [--socket PATH] [--duration D]",
		example: "nodetrust controlplane signer --data-dir /var/lib/nodetrust-cp --duration 8760h",
		run:     runControlplaneSigner,
	})
}

func subFlagSet(name string, env *cmdEnv) *flag.FlagSet {
	c := *controlplaneSubs[name]
	c.name = "controlplane " + c.name
	return newFlagSet(&c, env)
}

func runControlplaneServer(ctx context.Context, env *cmdEnv, c *command, args []string) error {
	fs := newFlagSet(c, env)
	dataDir := fs.String("data-dir", "", "control plane data folder (made by 'controlplane init')")
	listen := fs.String("listen", "127.0.0.1:6443", "address to serve the HTTPS API on")
	socket := fs.String("signer-socket", "", "signer UNIX socket (default DATA_DIR/run/signer.sock)")
	meta := fs.String("metadata", "", "metadata data file whose instances own kubelet serving names")
	metaData := fs.String("metadata-data", "", "metadata data file (served by 'nodetrust metadata --data') whose project attribute nodetrust-ca-bundle gets the trust bundle on every change")
	gc := fs.Duration("gc-interval", time.Hour, "how often old CSRs and expired tokens are collected")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	tunnelCfg := tunnelFlags(fs)
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	if *dataDir == "" {
		return fmt.Errorf("%w: --data-dir is required", errUsage)
	}
	log, err := newLogger(env.stderr, *level)
	if err != nil {
		return err
	}
	cfg := controlplane.Config{DataDir: *dataDir, SignerSocket: *socket, MetadataFile: *meta, MetadataData: *metaData, GCInterval: *gc, Logger: log}
	tunnelCfg(&cfg)
	srv, err := controlplane.NewServer(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		srv.Store.Close()
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	return notifyServing(log, "serving the API on "+ln.Addr().String(), func() error { return srv.Run(ctx, ln) })
}

func runControlplaneInit(ctx context.Context, env *cmdEnv, args []string) error {
	fs := subFlagSet("init", env)
	dataDir := fs.String("data-dir", "", "new control plane data folder")
	var sans stringList
	fs.Var(&sans, "san", "DNS name or IP of the API serving certificate (repeatable; localhost and 127.0.0.1 are always in)")
	server := fs.String("server", "https://127.0.0.1:6443", "API URL written into the admin kubeconfig")
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	if *dataDir == "" {
		return fmt.Errorf("%w: --data-dir is required", errUsage)
	}
	if err := controlplane.Init(controlplane.InitOptions{DataDir: *dataDir, SANs: sans, Server: *server}); err != nil {
		return err
	}
	p := controlplane.Paths{DataDir: *dataDir}
	fmt.Fprintf(env.stdout, "cluster CA:        %s\ncluster CA key:    %s (for the signer only)\netcd CA:           %s\nadmin kubeconfig:  %s\n",
		p.CACert(), p.CAKey(), p.EtcdCACert(), p.AdminKubeconfig())
	return nil
}

func runControlplaneSigner(ctx context.Context, env *cmdEnv, args []string) error {
	fs := subFlagSet("signer", env)
	dataDir := fs.String("data-dir", "", "control plane data folder")
	socket := fs.String("socket", "", "UNIX socket to listen on (default DATA_DIR/run/signer.sock)")
	dur := fs.Duration("duration", 365*24*time.Hour, "longest certificate lifetime; shorter spec.expirationSeconds (>= 10m) are honoured")
	backdate := fs.Duration("backdate", 5*time.Minute, "how long before now certificates start (clock skew); at most half of --duration, since agents plan renewal from the start")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	mode := signerSocketModeFlag(fs)
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	if *dataDir == "" {
		return fmt.Errorf("%w: --data-dir is required", errUsage)
	}
	switch {
	case *dur < time.Minute:
		return fmt.Errorf("%w: --duration %v is below the 1m minimum", errUsage, *dur)
	case *backdate <= 0:
		return fmt.Errorf("%w: --backdate %v must be positive", errUsage, *backdate)
	case *backdate > *dur/2:
		// Renewal is planned at 70-90% of NotBefore..NotAfter: a backdate
		// this long would put it before the certificate was even issued.
		return fmt.Errorf("%w: --backdate %v is more than half of --duration %v: agents would renew at once, forever; shorten --backdate (e.g. --backdate %v)",
			errUsage, *backdate, *dur, (*dur / 4).Round(time.Second))
	}
	log, err := newLogger(env.stderr, *level)
	if err != nil {
		return err
	}
	stop := notifySigner(ctx, log, *dataDir, *socket, mode.m)
	err = controlplane.RunSigner(ctx, controlplane.SignerConfig{DataDir: *dataDir, Socket: *socket, MaxDuration: *dur, Backdate: *backdate, Logger: log})
	stop()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
