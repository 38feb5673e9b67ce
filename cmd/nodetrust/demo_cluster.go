package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// demoSignerEnv, when set to a data folder, makes `nodetrust demo` run as
// the demo's signer process (the parent starts it that way).
const (
	demoSignerEnv   = "NODETRUST_DEMO_SIGNER"
	demoLifetimeEnv = "NODETRUST_DEMO_LIFETIME"
)

// runDemoSigner is the demo's signer child: the only process that reads
// the cluster CA key. It signs with the demo's short lifetimes.
func runDemoSigner(ctx context.Context, dir string) error {
	life, err := time.ParseDuration(os.Getenv(demoLifetimeEnv))
	if err != nil {
		return fmt.Errorf("%s: %w", demoLifetimeEnv, err)
	}
	return controlplane.RunSigner(ctx, controlplane.SignerConfig{DataDir: dir, MaxDuration: life, Backdate: time.Second})
}

// demoNode is one simulated VM: its own loopback address, a pod range, a
// stand-in kubelet and an agent.
type demoNode struct {
	name     string
	ip       string // the node's own address (its host view)
	pods     string // its pods' range
	podIP    string // one pod
	kubelet  net.Listener
	stateDir string
	agent    *agent.Agent
	stop     func()
}

func (n *demoNode) kubeletPort() int { return n.kubelet.Addr().(*net.TCPAddr).Port }

// demoCluster is everything the demo runs.
type demoCluster struct {
	dir      string
	tl       *timeline
	token    string
	apiURL   string
	cp       *controlplane.Server
	md       *metadata.Server
	mdAddr   string
	mdFile   string
	tunnel   string // tunnel server address agents dial
	connect  string // UNIX socket of the CONNECT frontend
	nodes    []*demoNode
	signer   *exec.Cmd
	wg       sync.WaitGroup
	stopping []func()
}

func (c *demoCluster) close() {
	for i := len(c.stopping) - 1; i >= 0; i-- {
		c.stopping[i]()
	}
	c.wg.Wait()
	os.RemoveAll(c.dir)
}

func freeAddr(ip string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return "", fmt.Errorf("listen on %s: %w", ip, err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// startControlPlane creates the trust roots, starts the signer as a child
// process and the API with its tunnel server in this one.
func (c *demoCluster) startControlPlane(ctx context.Context, lifetime time.Duration) error {
	apiAddr, err := freeAddr("127.0.0.1")
	if err != nil {
		return err
	}
	c.apiURL = "https://" + apiAddr
	if err := controlplane.Init(controlplane.InitOptions{DataDir: c.dir, Server: c.apiURL}); err != nil {
		return err
	}
	p := controlplane.Paths{DataDir: c.dir}
	c.tl.say("control plane", "trust roots created: cluster CA and a separate etcd CA; the CA key is in signer/ only")

	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable for the signer process: %w", err)
	}
	var signerOut bytes.Buffer
	cmd := exec.CommandContext(ctx, exe, "demo")
	cmd.Env = append(os.Environ(), demoSignerEnv+"="+c.dir, demoLifetimeEnv+"="+lifetime.String())
	cmd.Stdout, cmd.Stderr = &signerOut, &signerOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the signer process: %w", err)
	}
	exited := make(chan struct{})
	c.wg.Go(func() {
		cmd.Wait()
		close(exited)
	})
	c.stopping = append(c.stopping, func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	})
	for start := time.Now(); ; {
		if _, err := os.Stat(p.SignerSocket()); err == nil {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("the signer process exited: %s", strings.TrimSpace(signerOut.String()))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Since(start) > 10*time.Second {
			return errors.New("the signer process did not open its socket within 10 s")
		}
	}
	c.tl.say("control plane", "signer process (pid %d) holds the CA key and signs approved CSRs with %v lifetimes", cmd.Process.Pid, lifetime)

	c.tunnel, err = freeAddr("127.0.0.1")
	if err != nil {
		return err
	}
	c.connect = filepath.Join(c.dir, "run", "connect.sock")
	caPEM, err := os.ReadFile(p.CACert())
	if err != nil {
		return err
	}
	// The instances, without a token yet: the approver reads who owns
	// which names from them.
	if err := os.WriteFile(c.mdFile, c.metadataYAML(caPEM, ""), 0o600); err != nil {
		return err
	}
	srv, err := controlplane.NewServer(controlplane.Config{DataDir: c.dir, MetadataFile: c.mdFile, MetadataData: c.mdFile,
		Workers: 2, RotationCheck: 200 * time.Millisecond,
		TunnelListen: c.tunnel, TunnelConnectSocket: c.connect,
		Logger: slog.New(&timelineHandler{tl: c.tl, who: "control plane"})})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", apiAddr)
	if err != nil {
		srv.Store.Close()
		return fmt.Errorf("listen %s: %w", apiAddr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c.wg.Go(func() {
		defer close(done)
		if err := srv.Run(ctx, ln); err != nil {
			c.tl.say("control plane", "stopped: %v", err)
		}
	})
	c.stopping = append(c.stopping, func() { cancel(); <-done })
	c.cp = srv
	tok, _, err := srv.Tokens.Create(time.Hour, "nodetrust demo", nil)
	if err != nil {
		return err
	}
	c.token = tok
	c.tl.say("control plane", "API (certificates.k8s.io/v1) on %s, tunnel server on %s; bootstrap token %s created", c.apiURL, c.tunnel, mask(tok, tok))
	return nil
}

// metadataYAML is the metadata data file: each node gets the bootstrap
// token (when there is one yet) and the cluster CA, as a cloud injects them
// into a VM.
func (c *demoCluster) metadataYAML(caPEM []byte, token string) []byte {
	var b bytes.Buffer
	b.WriteString("project:\n  projectId: demo-project\n  numericProjectId: 123456789012\n  attributes: {cluster-name: demo}\ninstances:\n")
	ca := base64.StdEncoding.EncodeToString(caPEM)
	for i, n := range c.nodes {
		fmt.Fprintf(&b, "  - name: %s\n    id: %d\n    zone: europe-west1-b\n    hostname: %s.c.demo-project.internal\n    machineType: e2-standard-2\n",
			n.name, 4520031799277581759+i, n.name)
		b.WriteString("    attributes:\n      cluster-location: europe-west1\n")
		if token != "" {
			fmt.Fprintf(&b, "      nodetrust-bootstrap-token: %s\n      kube-env: |\n        KUBELET_BOOTSTRAP_TOKEN: %s\n        CA_CERT: %s\n", token, token, ca)
		}
		fmt.Fprintf(&b, "    serviceAccounts:\n      default:\n        email: %s@demo-project.iam.gserviceaccount.com\n        token: {accessToken: ya29.demo-%s-token}\n",
			n.name, n.name)
		fmt.Fprintf(&b, "    hostAddresses: [%s]\n    podRanges: [%s]\n", n.ip, n.pods)
	}
	return b.Bytes()
}

// startMetadata writes the data file and serves it, reloading on change.
func (c *demoCluster) startMetadata(ctx context.Context) error {
	caPEM, err := os.ReadFile(controlplane.Paths{DataDir: c.dir}.CACert())
	if err != nil {
		return err
	}
	data := c.metadataYAML(caPEM, c.token)
	if err := os.WriteFile(c.mdFile, data, 0o600); err != nil {
		return err
	}
	d, err := metadata.Parse(data)
	if err != nil {
		return fmt.Errorf("demo metadata: %w", err)
	}
	srv, err := metadata.NewServer(metadata.Config{}, d)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on loopback: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &metadata.Reloader{Path: c.mdFile, Server: srv, Interval: 100 * time.Millisecond, Loaded: data}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Run(ctx, ln) })
	wg.Go(func() { r.Run(ctx) })
	c.stopping = append(c.stopping, func() { cancel(); wg.Wait() })
	c.md, c.mdAddr = srv, ln.Addr().String()
	for _, n := range c.nodes {
		c.tl.say("metadata", "serving %s: host view to %s, concealed pod view to %s; token and CA injected", n.name, n.ip, n.pods)
	}
	return nil
}

// startKubelets starts a stand-in kubelet on each node's own address.
func (c *demoCluster) startKubelets() error {
	for _, n := range c.nodes {
		ln, err := net.Listen("tcp", n.ip+":0")
		if err != nil {
			return fmt.Errorf("%s kubelet: listen on %s: %w", n.name, n.ip, err)
		}
		n.kubelet = ln
		hs := &http.Server{Handler: kubeletMux(n.name), ReadHeaderTimeout: 5 * time.Second}
		c.wg.Go(func() { hs.Serve(ln) })
		c.stopping = append(c.stopping, func() { hs.Close() })
	}
	return nil
}

// startAgent starts node n's agent: it bootstraps from metadata, keeps its
// certificates valid and its tunnel open.
func (c *demoCluster) startAgent(n *demoNode) error {
	// Configured through the same parser as /etc/nodetrust/agent.yaml.
	yml := fmt.Sprintf("server: %s\nstateDir: %s\nmetadata: {host: %q}\ntrust: {checkInterval: 1s}\ntunnel:\n  servers: [%q]\n  allow: [\"self:%d\"]\n",
		c.apiURL, n.stateDir, c.mdAddr, c.tunnel, n.kubeletPort())
	cfg, err := agent.ParseConfig([]byte(yml))
	if err != nil {
		return err
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(n.ip)}, Timeout: 2 * time.Second}
	md := mdclient.New(mdclient.Config{Host: c.mdAddr, HTTPClient: &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}})
	addr := netip.MustParseAddr(n.ip)
	a, err := agent.New(cfg, agent.Options{
		Logger:    slog.New(&timelineHandler{tl: c.tl, who: n.name}),
		Metadata:  md,
		Addresses: func() ([]netip.Addr, error) { return []netip.Addr{addr}, nil },
		Hostname:  func() (string, error) { return n.name, nil },
	})
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	n.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c.wg.Go(func() {
		defer close(done)
		a.Run(ctx)
	})
	n.stop = func() { cancel(); <-done }
	c.stopping = append(c.stopping, n.stop)
	return nil
}
