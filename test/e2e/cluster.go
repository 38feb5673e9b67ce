//go:build linux

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/internal/atomicfile"
	"github.com/nodetrust/nodetrust/internal/tunnelwire"
	"github.com/nodetrust/nodetrust/metadata"
)

// Ports on the metadata host.
const (
	APIPort    = 6443
	TunnelPort = 8132
)

// ClusterOptions configures StartCluster.
type ClusterOptions struct {
	// Binary is the nodetrust binary (required).
	Binary string
	// Topology sizes the namespaces (default two nodes, one pod each).
	Topology TopologyOptions
	// AgentConfig, if set, edits each node's agent configuration (a YAML
	// map) before it is written, e.g. to add a section.
	AgentConfig func(n *Node, cfg map[string]any)
	// SignerArgs and APIArgs are added to the signer's and the API's
	// command lines (e.g. --duration 135s, --metadata-data FILE).
	SignerArgs, APIArgs []string
	// PublishBundle runs the API with --metadata-data on the metadata data
	// file: the trust bundle goes into project attribute
	// nodetrust-ca-bundle on every change.
	PublishBundle bool
	// InProcessSigner, when set, runs the signer in the test process (the
	// same controlplane.RunSigner the binary runs; the API reaches it over
	// its UNIX socket as usual) with these lifetimes, which the binary's
	// flags cannot set (it has no --backdate and a 10 m floor on
	// --duration): short certificate lifetimes for renewal scenarios.
	InProcessSigner *SignerLifetimes
}

// SignerLifetimes are an in-process signer's certificate lifetimes.
type SignerLifetimes struct {
	MaxDuration, Backdate time.Duration
}

// Cluster is a running metadata host (signer, API with tunnel server,
// metadata server) and nodes whose agents are started by StartAgent.
// Everything is stopped and removed when the test ends.
type Cluster struct {
	Bin           string
	Topo          *Topology
	Dir           string // temporary folder with every file and log
	CPDir         string // control plane data folder
	DataFile      string // metadata data file
	ConnectSocket string // tunnel server's HTTP CONNECT frontend
	Token         string // bootstrap token in every instance's metadata
	CAPEM         []byte // cluster CA
	Data          *metadata.Data
	Nodes         []*Node

	Signer, API, Metadata *Process

	t     testing.TB
	procs []*Process
}

// Node is one node: its namespace, files and agent.
type Node struct {
	Name       string
	Net        *NodeNet
	Dir        string
	StateDir   string
	ConfigPath string
	Agent      *Process // nil until StartAgent

	c *Cluster
}

// StartCluster builds the topology and starts the metadata host's
// processes; it fails the test on error. Agents are not started.
func StartCluster(t testing.TB, opt ClusterOptions) *Cluster {
	t.Helper()
	if opt.Binary == "" {
		t.Fatal("e2e: ClusterOptions.Binary is required")
	}
	dir, err := TempDir("run")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &Cluster{Bin: opt.Binary, Dir: dir, CPDir: filepath.Join(dir, "cp"), DataFile: filepath.Join(dir, "metadata.yaml"),
		ConnectSocket: filepath.Join(dir, "connect.sock"), t: t}
	t.Cleanup(c.dumpLogsIfFailed)
	topo, err := NewTopology(opt.Topology)
	if err != nil {
		t.Fatal(err)
	}
	c.Topo = topo
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("e2e teardown: %v", err)
		}
	})
	t.Cleanup(c.stopAll)
	for i, nn := range topo.Nodes {
		n := &Node{Name: fmt.Sprintf("node-%c", 'a'+i), Net: nn, Dir: filepath.Join(dir, fmt.Sprintf("node%d", i)), c: c}
		n.StateDir = filepath.Join(n.Dir, "state")
		n.ConfigPath = filepath.Join(n.Dir, "agent.yaml")
		if err := os.MkdirAll(n.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, n)
	}

	host := topo.Host
	_, err = c.runIn(host, "controlplane", "init", "--data-dir", c.CPDir, "--san", HostIP,
		"--server", fmt.Sprintf("https://%s:%d", HostIP, APIPort))
	c.must(err)
	if c.CAPEM, err = os.ReadFile(filepath.Join(c.CPDir, "pki", "ca.crt")); err != nil {
		t.Fatal(err)
	}
	var signerProcs []*Process
	if l := opt.InProcessSigner; l != nil {
		c.startSignerInProcess(*l)
	} else {
		c.Signer = c.start(host, "signer", append([]string{"controlplane", "signer", "--data-dir", c.CPDir}, opt.SignerArgs...)...)
		signerProcs = append(signerProcs, c.Signer)
	}
	c.Eventually(20*time.Second, "signer socket", func() error {
		_, err := os.Stat(filepath.Join(c.CPDir, "run", "signer.sock"))
		return err
	}, signerProcs...)

	c.Data = c.metadataData("")
	c.must(c.WriteData())
	if opt.PublishBundle {
		opt.APIArgs = append(opt.APIArgs, "--metadata-data", c.DataFile)
	}
	c.API = c.start(host, "api", append([]string{"controlplane", "--data-dir", c.CPDir,
		"--listen", fmt.Sprintf("%s:%d", HostIP, APIPort), "--metadata", c.DataFile,
		"--tunnel-listen", fmt.Sprintf("%s:%d", HostIP, TunnelPort), "--tunnel-connect-socket", c.ConnectSocket}, opt.APIArgs...)...)
	api := c.apiClient()
	c.Eventually(30*time.Second, "API /readyz", func() error {
		resp, err := api.Get(fmt.Sprintf("https://%s:%d/readyz", HostIP, APIPort))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	}, c.API)
	out, err := c.runIn(host, "controlplane", "token", "create", "--data-dir", c.CPDir, "--ttl", "1h", "--description", "e2e")
	c.must(err)
	c.Token = strings.TrimSpace(string(out))

	c.Data = c.metadataData(c.Token)
	c.must(c.WriteData())
	c.Metadata = c.start(host, "metadata", "metadata", "--listen", MetadataIP+":80", "--data", c.DataFile)
	first := c.Nodes[0]
	c.Eventually(20*time.Second, "metadata server from "+first.Name, func() error {
		_, err := first.MetadataGet("instance/name")
		return err
	}, c.Metadata)

	for _, n := range c.Nodes {
		cfg := map[string]any{
			"server":        fmt.Sprintf("https://%s:%d", HostIP, APIPort),
			"nodeName":      n.Name,
			"stateDir":      n.StateDir,
			"metricsListen": "127.0.0.1:9102", // the node's own loopback
			"tunnel":        map[string]any{"servers": []string{fmt.Sprintf("%s:%d", HostIP, TunnelPort)}},
		}
		if opt.AgentConfig != nil {
			opt.AgentConfig(n, cfg)
		}
		b, err := yaml.Marshal(cfg)
		c.must(err)
		c.must(os.WriteFile(n.ConfigPath, b, 0o600))
	}
	return c
}

// startSignerInProcess runs controlplane.RunSigner in the test process
// until the test ends.
func (c *Cluster) startSignerInProcess(l SignerLifetimes) {
	f, err := os.Create(filepath.Join(c.Dir, "signer.log"))
	c.must(err)
	log := slog.New(slog.NewTextHandler(f, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- controlplane.RunSigner(ctx, controlplane.SignerConfig{DataDir: c.CPDir, MaxDuration: l.MaxDuration, Backdate: l.Backdate, Logger: log})
	}()
	c.t.Cleanup(func() { f.Close() })
	c.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			c.t.Errorf("in-process signer: %v", err)
		}
	})
}

// metadataData is the metadata of every node: its own name and addresses,
// ordinary attributes, and, when token is set, the bootstrap secrets.
func (c *Cluster) metadataData(token string) *metadata.Data {
	d := &metadata.Data{Project: metadata.Project{ProjectID: "e2e-project", NumericProjectID: 424242,
		Attributes: map[string]string{"cluster-name": "e2e"}}}
	for i, n := range c.Nodes {
		in := metadata.Instance{
			Name: n.Name, ID: uint64(1000 + i), Zone: "e2e-zone-a",
			Hostname: n.Name + ".c.e2e-project.internal", MachineType: "e2-standard-2",
			NetworkInterfaces: []metadata.NetworkInterface{{IP: n.Net.IP, Network: "default", Gateway: HostIP}},
			Attributes:        map[string]string{"ordinary": "hello-" + n.Name},
			ServiceAccounts: map[string]metadata.ServiceAccount{"default": {
				Email: n.Name + "@e2e-project.iam.gserviceaccount.com",
				Token: &metadata.Token{AccessToken: "ya29.e2e-" + n.Name, ExpiresIn: 3599},
			}},
			HostAddresses: []string{n.Net.IP},
			PodRanges:     []string{PodSubnet(i)},
		}
		if token != "" {
			in.Attributes["nodetrust-bootstrap-token"] = token
			in.Attributes["kube-env"] = "CA_CERT: " + base64.StdEncoding.EncodeToString(c.CAPEM) + "\n"
		}
		d.Instances = append(d.Instances, in)
	}
	return d
}

// WriteData writes c.Data to the data file by rename, so the metadata
// server's reloader never sees half a file.
func (c *Cluster) WriteData() error {
	b, err := yaml.Marshal(c.Data)
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(c.DataFile, b, 0o600)
}

func (c *Cluster) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

// runIn runs a short nodetrust command in ns and returns its output.
func (c *Cluster) runIn(ns *Namespace, args ...string) ([]byte, error) {
	cmd := exec.Command(c.Bin, args...)
	cmd.Env = childEnv()
	out, err := ns.Run(cmd)
	if err != nil {
		return out, fmt.Errorf("nodetrust %s in %s: %w\n%s", strings.Join(args, " "), ns.Name, err, out)
	}
	return out, nil
}

func (c *Cluster) start(ns *Namespace, name string, args ...string) *Process {
	c.t.Helper()
	p, err := StartProcess(ns, name, filepath.Join(c.Dir, name+".log"), c.Bin, args...)
	c.must(err)
	c.procs = append(c.procs, p)
	return p
}

func (c *Cluster) stopAll() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].Stop(3 * time.Second)
	}
}

func (c *Cluster) dumpLogsIfFailed() {
	if !c.t.Failed() {
		return
	}
	seen := map[string]bool{}
	for _, p := range c.procs {
		if seen[p.Log] {
			continue
		}
		seen[p.Log] = true
		c.t.Logf("---- %s (last 4 KiB of %s) ----\n%s", p.Name, p.Log, p.Tail(4096))
	}
}

// Eventually polls fn every 100 ms until it returns nil, failing the test
// with the last error after timeout, or at once if one of procs exits.
func (c *Cluster) Eventually(timeout time.Duration, what string, fn func() error, procs ...*Process) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		for _, p := range procs {
			if done, perr := p.Exited(); done {
				c.t.Fatalf("%s: %s exited (%v) while waiting; last error: %v", what, p.Name, perr, err)
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// apiClient is an HTTPS client from the metadata host trusting the cluster CA.
func (c *Cluster) apiClient() *http.Client {
	hc := c.Topo.Host.HTTPClient()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	hc.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return hc
}

// Connect opens a connection to target (host:port, e.g. "node-a:10250")
// through the tunnel server's CONNECT frontend on its UNIX socket.
func (c *Cluster) Connect(ctx context.Context, target string) (net.Conn, error) {
	return tunnelwire.Connect(ctx, "unix", c.ConnectSocket, target)
}

// GetThroughTunnel makes one plain-HTTP GET of path on target through the
// CONNECT frontend and returns the body of a 200 answer.
func (c *Cluster) GetThroughTunnel(target, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return c.Connect(ctx, target) },
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s%s through the tunnel: HTTP %d: %s", target, path, resp.StatusCode, b)
	}
	return string(b), nil
}

// StartAgent starts the node's agent (again, after KillAgent).
func (n *Node) StartAgent() {
	c := n.c
	c.t.Helper()
	n.Agent = c.start(n.Net.NS, "agent-"+n.Name, "agent", "--config", n.ConfigPath)
}

// StopAgent stops the node's agent with SIGTERM (SIGKILL after 3 s).
func (n *Node) StopAgent() {
	if n.Agent != nil {
		n.Agent.Stop(3 * time.Second)
	}
}

// KillAgent kills the node's agent with SIGKILL.
func (n *Node) KillAgent() {
	if n.Agent != nil {
		n.Agent.Kill()
	}
}

// Status runs `nodetrust status --json` inside the node's namespace.
func (n *Node) Status() (*agent.Status, error) {
	out, err := n.c.runIn(n.Net.NS, "status", "--config", n.ConfigPath, "--json")
	if err != nil {
		return nil, err
	}
	var s agent.Status
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("status --json of %s: %w: %s", n.Name, err, out)
	}
	return &s, nil
}

// ClientCredential is the "client" credential of a status.
func ClientCredential(s *agent.Status) (agent.CredentialStatus, bool) {
	for _, cr := range s.Credentials {
		if cr.Name == "client" {
			return cr, true
		}
	}
	return agent.CredentialStatus{}, false
}

// WaitCertified waits until the node's status says it is healthy with a
// valid client certificate, and returns that status.
func (n *Node) WaitCertified(timeout time.Duration) *agent.Status {
	n.c.t.Helper()
	var st *agent.Status
	n.c.Eventually(timeout, n.Name+" certified", func() error {
		s, err := n.Status()
		if err != nil {
			return err
		}
		cr, ok := ClientCredential(s)
		if !ok || cr.State != "valid" || !s.Healthy {
			return fmt.Errorf("not yet: healthy=%v client=%+v", s.Healthy, cr)
		}
		st = s
		return nil
	}, n.Agent)
	return st
}

// WaitTunnel waits until GET path on <node>:port through the tunnel answers 200.
func (n *Node) WaitTunnel(timeout time.Duration, port int, path string) string {
	n.c.t.Helper()
	var body string
	n.c.Eventually(timeout, n.Name+" tunnel", func() error {
		var err error
		body, err = n.c.GetThroughTunnel(fmt.Sprintf("%s:%d", n.Name, port), path)
		return err
	}, n.Agent)
	return body
}

// ServeKubelet serves a kubelet-like plain-HTTP endpoint on port 10250 of
// every address in the node's namespace until the test ends; every path
// answers "kubelet <node> <path>".
func (n *Node) ServeKubelet(t testing.TB) {
	t.Helper()
	ln, err := n.Net.NS.Listen("tcp", ":10250")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "kubelet %s %s", n.Name, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// MetadataGet is GET /computeMetadata/v1/<path> from the node's own
// namespace (the host view); it returns the body of a 200 answer.
func (n *Node) MetadataGet(path string) (string, error) {
	code, body, err := MetadataRequest(n.Net.NS, path)
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("metadata %s from %s: HTTP %d: %s", path, n.Name, code, body)
	}
	return body, nil
}

// MetadataRequest is GET http://169.254.169.254/computeMetadata/v1/<path>
// with Metadata-Flavor: Google from inside ns.
func MetadataRequest(ns *Namespace, path string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+MetadataIP+"/computeMetadata/v1/"+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := ns.HTTPClient().Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}
