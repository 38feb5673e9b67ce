package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/controlplane/apiserver"
)

func init() {
	register(&command{
		name:    "demo",
		summary: "Run the all-in-one demo on loopback, unprivileged: metadata server, control plane with its signer process, two agents, tunnels, certificate and CA rotation.",
		usage:   "[--cert-lifetime D]\n\nEverything runs on 127.0.0.0/8 in a temporary folder that is removed at the end or on Ctrl-C.",
		example: "nodetrust demo --cert-lifetime 20s",
		run:     runDemo,
	})
}

// demoClient is an HTTP client whose connections come from src.
func demoClient(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{DialContext: d.DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func demoGet(ctx context.Context, c *http.Client, base, suffix string) (int, string, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/computeMetadata/v1/"+suffix, nil)
	if err != nil {
		return 0, "", "", err
	}
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), resp.Header.Get("ETag"), err
}

// mask hides every occurrence of secret, keeping the token id (public in
// the kubeadm format) so the reader sees which token it is.
func mask(s, secret string) string {
	id, _, _ := strings.Cut(secret, ".")
	return strings.ReplaceAll(s, secret, id+".<secret>")
}

func summarize(code int, body, secret string) string {
	if code != http.StatusOK {
		return fmt.Sprintf("%d %s", code, http.StatusText(code))
	}
	s := strings.TrimSpace(mask(body, secret))
	s = strings.ReplaceAll(s, "\n", " | ")
	limit := 48
	if strings.Contains(body, secret) {
		limit = 38
	}
	if len(s) > limit {
		s = s[:limit-3] + "..."
	}
	if strings.Contains(body, secret) {
		s += " [secret]"
	}
	return s
}

func runDemo(ctx context.Context, env *cmdEnv, args []string) error {
	if dir := os.Getenv(demoSignerEnv); dir != "" {
		return runDemoSigner(ctx, dir)
	}
	fs := newFlagSet(commands["demo"], env)
	lifetime := fs.Duration("cert-lifetime", 20*time.Second, "lifetime of the node certificates the demo's signer issues; agents renew at 70-90% of it")
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	if *lifetime < 10*time.Second {
		return fmt.Errorf("%w: --cert-lifetime %v: at least 10s", errUsage, *lifetime)
	}
	dir, err := os.MkdirTemp("", "nodetrust-demo-")
	if err != nil {
		return err
	}
	tl := newTimeline(env.stdout)
	c := &demoCluster{dir: dir, tl: tl, mdFile: filepath.Join(dir, "metadata.yaml")}
	for i, name := range []string{"node-1", "node-2"} {
		c.nodes = append(c.nodes, &demoNode{name: name, ip: fmt.Sprintf("127.0.0.%d", 11+i),
			pods: fmt.Sprintf("127.0.%d.0/24", 1+i), podIP: fmt.Sprintf("127.0.%d.10", 1+i),
			stateDir: filepath.Join(dir, name)})
	}
	err = c.play(ctx, *lifetime)
	if ctx.Err() != nil {
		tl.say("demo", "interrupted: stopping every component and removing %s", dir)
		err = nil
	}
	c.close()
	if err == nil && ctx.Err() == nil {
		tl.say("demo", "done: every component stopped, %s removed", dir)
	}
	return err
}

// play runs the demo's story, step by step.
func (c *demoCluster) play(ctx context.Context, lifetime time.Duration) error {
	if err := c.startControlPlane(ctx, lifetime); err != nil {
		return err
	}
	if err := c.startMetadata(ctx); err != nil {
		return err
	}
	if err := c.startKubelets(); err != nil {
		return err
	}
	for _, n := range c.nodes {
		if err := c.startAgent(n); err != nil {
			return err
		}
	}
	tunnels := tunnelClient(c.connect)
	for _, n := range c.nodes {
		if err := waitFor(ctx, 30*time.Second, func() bool { return c.tl.count(n.name, msgTunnelUp) > 0 }); err != nil {
			return fmt.Errorf("%s did not come up with a certificate and a tunnel: %w", n.name, err)
		}
	}
	if err := c.showViews(ctx); err != nil {
		return err
	}
	for _, n := range c.nodes {
		body, err := tunnelGet(ctx, tunnels, n, "/healthz")
		if err != nil {
			return fmt.Errorf("request through %s's tunnel: %w", n.name, err)
		}
		c.tl.say("control plane", "GET http://%s:%d/healthz through %s's tunnel: %q", n.name, n.kubeletPort(), n.name, body)
	}
	_, err := tunnelClient(c.connect).Get("http://" + c.nodes[0].name + ":22/")
	if err == nil {
		return errors.New("the tunnel reached port 22, which the allowlist does not hold")
	}
	c.tl.say("control plane", "CONNECT %s:22 refused by the agent's allowlist: the tunnel is no proxy into the node (%s)", c.nodes[0].name, shortErr(err))

	var tr traffic
	tctx, stopTraffic := context.WithCancel(ctx)
	tdone := make(chan struct{})
	go func() { defer close(tdone); tr.run(tctx, c.connect, c.nodes) }()
	defer func() { stopTraffic(); <-tdone }()
	c.tl.say("control plane", "streaming %s's logs through its tunnel and sending small requests to both nodes, from now to the end", c.nodes[len(c.nodes)-1].name)

	if err := c.certRotation(ctx, lifetime, &tr); err != nil {
		return err
	}
	if err := c.caRotation(ctx, &tr); err != nil {
		return err
	}
	stopTraffic()
	<-tdone
	c.tl.say("control plane", "traffic through the tunnels: %s", tr.summary())
	if tr.fail.Load() > 0 || tr.bytes.Load() == 0 {
		return fmt.Errorf("traffic through the tunnels failed: %s", tr.summary())
	}
	return c.showStatus()
}

// Agent log messages the demo's steps wait for.
const (
	msgTunnelUp    = "tunnel connected"
	msgTunnelMoved = "client certificate changed; new tunnel up, draining the old one"
)

// waitFor polls cond every 50 ms until it holds, ctx ends or d passes.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s) > 90 {
		s = s[i+2:]
	}
	return s
}

// showViews prints what node-1's host and one of its pods get from the
// metadata server.
func (c *demoCluster) showViews(ctx context.Context) error {
	n := c.nodes[0]
	base := "http://" + c.mdAddr
	host, pod := demoClient(n.ip), demoClient(n.podIP)
	paths := []string{
		"instance/attributes/nodetrust-bootstrap-token",
		"instance/attributes/kube-env",
		"instance/attributes/",
		"instance/attributes/?recursive=true",
		"instance/service-accounts/default/token",
		"?recursive=true&alt=text",
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n  %-46s %-50s %s\n", "GET /computeMetadata/v1/...", "host view ("+n.ip+", "+n.name+")", "pod view ("+n.podIP+")")
	leaks := 0
	for _, p := range paths {
		hc, hb, _, err := demoGet(ctx, host, base, p)
		if err != nil {
			return fmt.Errorf("host request %s: %w", p, err)
		}
		pc, pb, _, err := demoGet(ctx, pod, base, p)
		if err != nil {
			return fmt.Errorf("pod request %s: %w", p, err)
		}
		if strings.Contains(pb, c.token) || strings.Contains(pb, "kube-env") {
			leaks++
		}
		fmt.Fprintf(&b, "  %-46s %-50s %s\n", p, summarize(hc, hb, c.token), summarize(pc, pb, c.token))
	}
	c.tl.say("metadata", "what %s's host and one of its pods read (the token is masked here, not on the wire):", n.name)
	c.tl.raw(b.String() + "\n")
	if leaks > 0 {
		return fmt.Errorf("the pod view leaked the secret in %d responses", leaks)
	}
	c.tl.say("metadata", "the pod view never contained the token or the name kube-env")
	return nil
}

// serial is the serial number of node n's current client certificate.
func serial(n *demoNode) string {
	cert, err := n.agent.ClientCertificate()
	if err != nil || cert.Leaf == nil {
		return ""
	}
	return cert.Leaf.SerialNumber.String()
}

// certRotation waits for each agent to renew its client certificate once,
// while the traffic flows.
func (c *demoCluster) certRotation(ctx context.Context, lifetime time.Duration, tr *traffic) error {
	c.tl.say("demo", "waiting for both agents to rotate their %v certificates (at 70-90%% of the lifetime, new key each time)", lifetime)
	first := map[string]string{}
	moved := map[string]int{}
	for _, n := range c.nodes {
		first[n.name] = serial(n)
		moved[n.name] = c.tl.count(n.name, msgTunnelMoved)
	}
	for _, n := range c.nodes {
		if err := waitFor(ctx, 2*lifetime, func() bool { s := serial(n); return s != "" && s != first[n.name] }); err != nil {
			return fmt.Errorf("%s did not rotate its certificate: %w", n.name, err)
		}
		if err := waitFor(ctx, lifetime, func() bool { return c.tl.count(n.name, msgTunnelMoved) > moved[n.name] }); err != nil {
			return fmt.Errorf("%s's tunnel did not move to its new certificate: %w", n.name, err)
		}
	}
	c.tl.say("control plane", "both nodes rotated; traffic so far: %s; log stream unbroken: %v", tr.summary(), tr.streamOK.Load())
	if !tr.streamOK.Load() {
		return fmt.Errorf("the log stream broke during the certificate rotation: %s", tr.summary())
	}
	return nil
}

// caRotation rotates the cluster CA with the operator's commands while
// both nodes follow by themselves and the traffic keeps flowing.
func (c *demoCluster) caRotation(ctx context.Context, tr *traffic) error {
	if err := c.rotate(ctx, "start"); err != nil {
		return err
	}
	// The agents read the new bundle, re-issue under the new CA, and the
	// control plane moves its serving certificates once no node is left
	// on the old CA (phase update-servers).
	var st apiserver.RotationStatus
	if err := waitFor(ctx, 30*time.Second, func() bool {
		var err error
		st, err = c.rotationStatus(ctx)
		return err == nil && st.Phase == "update-servers" && st.NodesNotOnActive == 0
	}); err != nil {
		return fmt.Errorf("the nodes did not all move to the new CA (phase %s, %d nodes left): %w", st.Phase, st.NodesNotOnActive, err)
	}
	c.tl.say("control plane", "every node holds a certificate of the new CA: API and tunnel serving certificates moved to it (phase update-servers)")
	if err := c.rotate(ctx, "status"); err != nil {
		return err
	}
	if err := c.rotate(ctx, "complete"); err != nil {
		return err
	}
	for _, n := range c.nodes {
		if err := waitFor(ctx, 30*time.Second, func() bool { return c.bundleSize(n) == 1 }); err != nil {
			return fmt.Errorf("%s still trusts the old CA after complete: %w", n.name, err)
		}
	}
	c.tl.say("control plane", "both nodes trust only the new CA; traffic so far: %s; log stream unbroken: %v", tr.summary(), tr.streamOK.Load())
	if !tr.streamOK.Load() {
		return fmt.Errorf("the log stream broke during the CA rotation: %s", tr.summary())
	}
	return nil
}

// rotate runs `nodetrust controlplane rotate <verb>` as an operator would,
// and shows the command and its answer.
func (c *demoCluster) rotate(ctx context.Context, verb string) error {
	var out, errb strings.Builder
	args := []string{"controlplane", "rotate", verb, "--data-dir", c.dir}
	code := runMain(ctx, &cmdEnv{stdout: &out, stderr: &errb}, args)
	if code != 0 {
		return fmt.Errorf("nodetrust %s: exit %d: %s", strings.Join(args, " "), code, strings.TrimSpace(errb.String()))
	}
	c.tl.say("operator", "$ nodetrust controlplane rotate %s --data-dir $DIR", verb)
	c.tl.raw(indent(out.String()))
	return nil
}

func (c *demoCluster) rotationStatus(ctx context.Context) (apiserver.RotationStatus, error) {
	var st apiserver.RotationStatus
	var b strings.Builder
	code := runMain(ctx, &cmdEnv{stdout: &b, stderr: io.Discard}, []string{"controlplane", "rotate", "status", "--json", "--data-dir", c.dir})
	if code != 0 {
		return st, fmt.Errorf("rotate status: exit %d", code)
	}
	return st, json.Unmarshal([]byte(b.String()), &st)
}

// bundleSize is how many CAs node n trusts now.
func (c *demoCluster) bundleSize(n *demoNode) int {
	b, err := os.ReadFile(filepath.Join(n.stateDir, "ca.crt"))
	if err != nil {
		return -1
	}
	return strings.Count(string(b), "-----BEGIN CERTIFICATE-----")
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("           " + l + "\n")
	}
	return b.String()
}

// showStatus stops the agents and prints `nodetrust status` of each node.
func (c *demoCluster) showStatus() error {
	for _, n := range c.nodes {
		n.stop()
	}
	for _, n := range c.nodes {
		st, err := agent.ReadStatus(filepath.Join(n.stateDir, agent.StatusFile))
		if err != nil {
			return err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "\n$ nodetrust status   # on %s\n", n.name)
		st.Describe(&b, time.Now())
		c.tl.raw(b.String())
	}
	c.tl.raw("\n")
	return nil
}
