//go:build linux

package e2e

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/test/attacks"
)

// podSecrets are what no answer to a pod of node n may contain: the
// bootstrap secrets and any node's access token (values), and the
// concealed attribute names (matched without regard to case).
func podSecrets(c *Cluster, n *Node) (values, keys []string) {
	return []string{c.Token, "CA_CERT", base64.StdEncoding.EncodeToString(c.CAPEM), "ya29.e2e-"},
		[]string{"kube-env", "nodetrust-bootstrap-token"}
}

// attackFromPod runs the whole shared attack suite (test/attacks, which the
// metadata unit tests run too) from pod p of node n against the metadata
// address. Each attack must get the status the unit tests expect (the
// node-local server answers as the metadata server does; the real one,
// which answers pods 403, must not be reached), Metadata-Flavor: Google,
// and nothing of podSecrets in its status line, headers or body.
func attackFromPod(t *testing.T, c *Cluster, n *Node, p *PodNet) {
	t.Helper()
	values, keys := podSecrets(c, n)
	addr := net.JoinHostPort(MetadataIP, "80")
	list := attacks.List()
	for _, a := range list {
		resp, err := attacks.Send(p.NS.DialContext, addr, a, 15*time.Second)
		if err != nil {
			t.Errorf("pod %s of %s: %s: no HTTP answer: %v", p.IP, n.Name, a.Name, err)
			continue
		}
		got := fmt.Sprintf("%d %s\n%s\n%s", resp.Status, http.StatusText(resp.Status), resp.HeaderText(), resp.Body)
		if l := attacks.Leaks(got, values, keys); len(l) > 0 {
			t.Errorf("pod %s of %s: %s (%s %s %q): the answer reveals %q:\n%s", p.IP, n.Name, a.Name, a.MethodOf(), a.Target, a.Extra, l, got)
		}
		if a.Want != 0 && resp.Status != a.Want {
			t.Errorf("pod %s of %s: %s (%s %s %q): HTTP %d, want %d:\n%s", p.IP, n.Name, a.Name, a.MethodOf(), a.Target, a.Extra, resp.Status, a.Want, got)
		}
		if f := resp.Header.Get("Metadata-Flavor"); f != "Google" {
			t.Errorf("pod %s of %s: %s: Metadata-Flavor %q, want Google", p.IP, n.Name, a.Name, f)
		}
	}
	t.Logf("pod %s of %s: %d attacks, none revealed anything", p.IP, n.Name, len(list))
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
