//go:build linux

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// podAttacks are request targets (sent verbatim) with which a pod tries to
// read the node's secrets: direct paths in many spellings, listings,
// recursive dumps at every level in JSON and text, long-polls, legacy
// endpoints, tokens and forwarding headers.
var podAttacks = []struct{ target, extra string }{
	{"/computeMetadata/v1/instance/attributes/kube-env", ""},
	{"/computeMetadata/v1/instance/attributes/nodetrust-bootstrap-token", ""},
	{"/computeMetadata/v1/instance/attributes/kube-env?alt=json", ""},
	{"/computeMetadata/v1/instance/attributes/kube-env/", ""},
	{"/computeMetadata/v1/instance/attributes/KUBE-ENV", ""},
	{"/computeMetadata/v1/instance/attributes/%6b%75%62%65-env", ""},
	{"/computeMetadata/v1/instance/attributes/nodetrust%2dbootstrap%2dtoken", ""},
	{"/computeMetadata/v1/instance/attributes//kube-env", ""},
	{"/computeMetadata/v1/instance/attributes%2Fkube-env", ""},
	{"/computeMetadata/v1/instance/../instance/attributes/kube-env", ""},
	{"/computeMetadata/v1/instance/attributes/kube-env%00", ""},
	{"/computeMetadata/v1/instance/attributes/kube-env;x", ""},
	{"/computeMetadata/v1/project/attributes/kube-env", ""},
	{"/computeMetadata/v1/instance/attributes/", ""},
	{"/computeMetadata/v1/instance/attributes/?recursive=true", ""},
	{"/computeMetadata/v1/instance/attributes/?recursive=true&alt=text", ""},
	{"/computeMetadata/v1/instance/?recursive=true", ""},
	{"/computeMetadata/v1/instance/?recursive=true&alt=text", ""},
	{"/computeMetadata/v1/?recursive=true", ""},
	{"/computeMetadata/v1/?recursive=true&alt=text", ""},
	{"/computeMetadata/v1/project/?recursive=true", ""},
	{"/?recursive=true", ""},
	{"/computeMetadata/v1/instance/attributes/?recursive=true&wait_for_change=true&last_etag=NONE", ""},
	{"/computeMetadata/v1/?recursive=true&alt=json&wait_for_change=true&last_etag=NONE&timeout_sec=5", ""},
	{"/computeMetadata/v1/instance/attributes/kube-env?wait_for_change=true&last_etag=NONE", ""},
	{"/computeMetadata/v1beta1/instance/attributes/kube-env", ""},
	{"/computeMetadata/v1beta1/instance/attributes/?recursive=true", ""},
	{"/0.1/meta-data/attributes/kube-env", ""},
	{"/0.1/meta-data/attributes/?recursive=true", ""},
	{"/computeMetadata/v1/instance/service-accounts/default/token", ""},
	{"/computeMetadata/v1/instance/service-accounts/default/identity?audience=x", ""},
	{"/computeMetadata/v1/instance/service-accounts/?recursive=true", ""},
	{"http://169.254.169.254/computeMetadata/v1/instance/attributes/kube-env", ""},
	{"/computeMetadata/v1/instance/attributes/kube-env", "X-Forwarded-For: 10.77.0.11\r\n"},
	{"/computeMetadata/v1/?recursive=true", "X-Forwarded-For: 10.77.0.11\r\n"},
	{"/computeMetadata/v1/?recursive=true", "Forwarded: for=10.77.0.11\r\n"},
	{"/computeMetadata/v1/instance/attributes/kube-env", "X-Real-IP: 10.77.0.11\r\n"},
}

// rawMetadataRequest sends one request with target as written, from ns,
// and returns the whole answer (status line, headers and body).
func rawMetadataRequest(ns *Namespace, target, extra string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := ns.DialContext(ctx, "tcp", net.JoinHostPort(MetadataIP, "80"))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\n%sConnection: close\r\n\r\n", target, extra)
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(conn), 4<<20))
	return string(b), err
}

// podSecrets are what no answer to a pod may contain.
func podSecrets(c *Cluster, n *Node) []string {
	return []string{c.Token, "kube-env", "CA_CERT", "nodetrust-bootstrap-token", "ya29.e2e-" + n.Name}
}

// attackFromPod runs podAttacks from pod p of node n.
func attackFromPod(t *testing.T, c *Cluster, n *Node, p *PodNet) {
	t.Helper()
	for _, a := range podAttacks {
		got, err := rawMetadataRequest(p.NS, a.target, a.extra)
		if err != nil {
			t.Errorf("pod %s of %s: %s: %v", p.IP, n.Name, a.target, err)
			continue
		}
		for _, s := range podSecrets(c, n) {
			if strings.Contains(got, s) {
				t.Errorf("pod %s of %s: %s %q: the answer contains %q:\n%s", p.IP, n.Name, a.target, a.extra, s, got)
			}
		}
	}
}

// waitPodServed waits until pod p gets its node's name from the metadata
// address: answered by the agent's node-local server, since the real one
// answers pods 403 in these tests.
func waitPodServed(c *Cluster, n *Node, p *PodNet) {
	c.t.Helper()
	c.Eventually(30*time.Second, fmt.Sprintf("pod %s of %s served by the node-local metadata server", p.IP, n.Name), func() error {
		code, body, err := MetadataRequest(p.NS, "instance/name")
		if err != nil {
			return err
		}
		if code != 200 || body != n.Name {
			return fmt.Errorf("HTTP %d %q", code, body)
		}
		return nil
	}, n.Agent)
}

// startPodMetadataCluster starts a cluster whose agents run the node-local
// concealing metadata server for their pods (podMetadata), and whose real
// metadata server no longer knows the pod ranges: it answers pods 403, so
// a pod answered 200 was steered to its node's agent.
func startPodMetadataCluster(t *testing.T) *Cluster {
	t.Helper()
	requireRoot(t)
	c := StartCluster(t, ClusterOptions{Binary: bin, AgentConfig: func(n *Node, cfg map[string]any) {
		cfg["podMetadata"] = map[string]any{
			"enabled":       true,
			"podInterfaces": []string{"cbr0"},
			"podCIDRs":      []string{PodSubnet(n.Net.Index)},
		}
	}})
	for i := range c.Data.Instances {
		c.Data.Instances[i].PodRanges = nil
	}
	c.must(c.WriteData())
	for _, n := range c.Nodes {
		p := n.Net.Pods[0]
		c.Eventually(20*time.Second, "real metadata server refuses pods after the reload", func() error {
			code, _, err := MetadataRequest(p.NS, "instance/name")
			if err != nil {
				return err
			}
			if code != 403 {
				return fmt.Errorf("HTTP %d", code)
			}
			return nil
		}, c.Metadata)
	}
	for _, n := range c.Nodes {
		n.StartAgent()
	}
	for _, n := range c.Nodes {
		n.WaitCertified(60 * time.Second)
	}
	return c
}

// From inside the pod namespaces, the attack suite finds none of the
// node's secrets while ordinary metadata is served; the nodes themselves
// still read their bootstrap secret from the real server.
func TestPodMetadataConcealed(t *testing.T) {
	c := startPodMetadataCluster(t)
	for _, n := range c.Nodes {
		p := n.Net.Pods[0]
		waitPodServed(c, n, p)
		for path, want := range map[string]string{
			"project/project-id":                      "e2e-project",
			"instance/attributes/ordinary":            "hello-" + n.Name,
			"instance/hostname":                       n.Name + ".c.e2e-project.internal",
			"instance/service-accounts/default/email": n.Name + "@e2e-project.iam.gserviceaccount.com",
		} {
			code, body, err := MetadataRequest(p.NS, path)
			if err != nil || code != 200 || body != want {
				t.Errorf("pod %s of %s: %s: HTTP %d %q (%v), want %q", p.IP, n.Name, path, code, body, err, want)
			}
		}
		attackFromPod(t, c, n, p)
		if got, err := n.MetadataGet("instance/attributes/nodetrust-bootstrap-token"); err != nil || got != c.Token {
			t.Errorf("%s no longer reads its bootstrap token: %q %v", n.Name, got, err)
		}
	}
}

// A pod namespace added after the agent started is concealed too.
func TestPodAddedLaterConcealed(t *testing.T) {
	c := startPodMetadataCluster(t)
	n := c.Nodes[0]
	waitPodServed(c, n, n.Net.Pods[0])
	p, err := n.Net.AddPod()
	if err != nil {
		t.Fatal(err)
	}
	waitPodServed(c, n, p)
	attackFromPod(t, c, n, p)
}
