//go:build linux

package e2e

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// bin is the nodetrust binary TestMain built (empty when not root).
var bin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips
	}
	if removed := Sweep(); len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: removed what crashed runs left: %s\n", strings.Join(removed, " "))
	}
	dir, err := TempDir("bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		start := time.Now()
		var err error
		if bin, err = buildBinary(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e: built %s in %v\n", bin, time.Since(start).Round(time.Millisecond))
		return m.Run()
	}()
	os.Exit(code)
}

// buildBinary builds ./cmd/nodetrust of this module into dir.
func buildBinary(dir string) (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("module root not found: %w", err)
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	out := filepath.Join(dir, "nodetrust")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/nodetrust")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/nodetrust: %w\n%s", err, b)
	}
	return out, nil
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root to create network namespaces")
	}
}

func startCluster(t *testing.T) *Cluster {
	t.Helper()
	requireRoot(t)
	return StartCluster(t, ClusterOptions{Binary: bin})
}

// Both nodes bootstrap from their own metadata and hold a node client
// certificate of the cluster CA, as status and the files on disk say.
func TestBootstrapBothNodes(t *testing.T) {
	c := startCluster(t)
	for _, n := range c.Nodes {
		n.StartAgent()
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.CAPEM)
	for _, n := range c.Nodes {
		st := n.WaitCertified(60 * time.Second)
		cr, _ := ClientCredential(st)
		if st.Node != n.Name || !strings.Contains(cr.Subject, "system:node:"+n.Name) {
			t.Errorf("%s: status node %q subject %q", n.Name, st.Node, cr.Subject)
		}

		current := filepath.Join(n.StateDir, "pki", "kubelet-client-current.pem")
		fi, err := os.Stat(current)
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %s has mode %v, want 0600", n.Name, current, fi.Mode().Perm())
		}
		leaf := firstCert(t, current)
		if leaf.Subject.CommonName != "system:node:"+n.Name || len(leaf.Subject.Organization) != 1 || leaf.Subject.Organization[0] != "system:nodes" {
			t.Errorf("%s: certificate subject %v", n.Name, leaf.Subject)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: certificate does not chain to the cluster CA: %v", n.Name, err)
		}
		if ca, err := os.ReadFile(filepath.Join(n.StateDir, "ca.crt")); err != nil || !bytes.Equal(bytes.TrimSpace(ca), bytes.TrimSpace(c.CAPEM)) {
			t.Errorf("%s: ca.crt is not the cluster CA (err %v)", n.Name, err)
		}
		if _, err := os.Stat(filepath.Join(n.StateDir, "kubelet.kubeconfig")); err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
		// The bootstrap secret stays in memory.
		filepath.WalkDir(n.StateDir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(c.Token)) {
				t.Errorf("%s: the bootstrap token is written in %s", n.Name, p)
			}
			return nil
		})
	}
}

func firstCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			t.Fatalf("%s: no certificate", path)
		}
		if blk.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return cert
		}
	}
}

// The control plane reaches each node's kubelet port through that node's
// tunnel (CONNECT <node>:10250 on the UNIX-socket frontend), and nothing
// else: unknown nodes have no tunnel, other ports are refused by the agent.
func TestTunnelReachesKubelet(t *testing.T) {
	c := startCluster(t)
	for _, n := range c.Nodes {
		n.ServeKubelet(t)
		n.StartAgent()
	}
	for _, n := range c.Nodes {
		n.WaitCertified(60 * time.Second)
		body := n.WaitTunnel(30*time.Second, 10250, "/healthz")
		if want := "kubelet " + n.Name + " /healthz"; body != want {
			t.Errorf("through %s's tunnel: %q, want %q", n.Name, body, want)
		}
	}
	if _, err := c.GetThroughTunnel("node-zz:10250", "/"); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("CONNECT to a node without a tunnel: %v, want HTTP 503", err)
	}
	if _, err := c.GetThroughTunnel(c.Nodes[0].Name+":22", "/"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("CONNECT to a port the agent does not allow: %v, want HTTP 403", err)
	}
}

// A node's own (host) namespace reads its bootstrap secret and its ordinary
// metadata; each node sees its own instance.
func TestHostReadsBootstrapSecret(t *testing.T) {
	c := startCluster(t)
	for _, n := range c.Nodes {
		want := map[string]string{
			"instance/attributes/nodetrust-bootstrap-token": c.Token,
			"instance/name":                n.Name,
			"instance/attributes/ordinary": "hello-" + n.Name,
			"project/project-id":           "e2e-project",
		}
		for path, w := range want {
			got, err := n.MetadataGet(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != w {
				t.Errorf("%s: %s = %q, want %q", n.Name, path, got, w)
			}
		}
		for path, w := range map[string]string{
			"instance/attributes/kube-env":            "CA_CERT: ",
			"instance/service-accounts/default/token": "ya29.e2e-" + n.Name,
			"instance/network-interfaces/0/ip":        n.Net.IP,
			"instance/attributes/?recursive=true":     c.Token,
			"instance/service-accounts/default/email": n.Name + "@",
			"instance/attributes/":                    "nodetrust-bootstrap-token",
			"instance/hostname":                       n.Name + ".c.e2e-project.internal",
			"project/attributes/cluster-name":         "e2e",
		} {
			got, err := n.MetadataGet(path)
			if err != nil {
				t.Error(err)
				continue
			}
			if !strings.Contains(got, w) {
				t.Errorf("%s: %s = %q, want it to contain %q", n.Name, path, got, w)
			}
		}
	}
}

// A killed and restarted agent keeps the node's identity (the same
// certificate from disk, no new bootstrap) and its tunnel comes back.
func TestAgentRestartKeepsIdentity(t *testing.T) {
	c := startCluster(t)
	n := c.Nodes[0]
	n.ServeKubelet(t)
	n.StartAgent()
	before, _ := ClientCredential(n.WaitCertified(60 * time.Second))
	n.WaitTunnel(30*time.Second, 10250, "/")
	link := filepath.Join(n.StateDir, "pki", "kubelet-client-current.pem")
	targetBefore, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}

	n.KillAgent()
	c.Eventually(15*time.Second, "tunnel gone after the kill", func() error {
		_, err := c.GetThroughTunnel(n.Name+":10250", "/")
		if err == nil {
			return fmt.Errorf("still reachable")
		}
		return nil
	})
	n.StartAgent()
	n.WaitTunnel(30*time.Second, 10250, "/")
	st := n.WaitCertified(30 * time.Second)
	after, _ := ClientCredential(st)
	if st.Node != n.Name || after.Serial != before.Serial || after.Subject != before.Subject {
		t.Errorf("identity changed across the restart: before %s serial %s, after %s serial %s (node %s)",
			before.Subject, before.Serial, after.Subject, after.Serial, st.Node)
	}
	if targetAfter, err := os.Readlink(link); err != nil || targetAfter != targetBefore {
		t.Errorf("current certificate link: %q then %q (%v)", targetBefore, targetAfter, err)
	}
}

// An agent started while the metadata host is unreachable keeps trying and
// gets its credentials once the route is back.
func TestMetadataUnreachableAtBoot(t *testing.T) {
	c := startCluster(t)
	n := c.Nodes[1]
	if err := n.Net.SetMetadataRoute(false); err != nil {
		t.Fatal(err)
	}
	if _, err := n.MetadataGet("instance/name"); err == nil {
		t.Fatal("metadata still reachable without the route")
	}
	n.StartAgent()
	c.Eventually(30*time.Second, n.Name+" reports the failure", func() error {
		s, err := n.Status()
		if err != nil {
			return err
		}
		if cr, _ := ClientCredential(s); cr.LastError == "" || cr.State == "valid" {
			return fmt.Errorf("no failure reported yet: %+v", cr)
		}
		return nil
	}, n.Agent)
	if _, err := os.Stat(filepath.Join(n.StateDir, "pki", "kubelet-client-current.pem")); err == nil {
		t.Fatal("a certificate without metadata")
	}
	if err := n.Net.SetMetadataRoute(true); err != nil {
		t.Fatal(err)
	}
	n.WaitCertified(90 * time.Second)
}

// The topology itself: each pod reaches its node's kubelet port through the
// pod bridge, also a pod added after the agents started, and the metadata
// host (the base the pod scenarios build on).
func TestTopologyPodsReachTheirNode(t *testing.T) {
	c := startCluster(t)
	for _, n := range c.Nodes {
		n.ServeKubelet(t)
		n.StartAgent()
	}
	for _, n := range c.Nodes {
		late, err := n.Net.AddPod()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range n.Net.Pods {
			// Ordinary metadata is served to pods (whichever server answers).
			code, body, err := MetadataRequest(p.NS, "instance/name")
			if err != nil || code != 200 || body != n.Name {
				t.Errorf("pod %s of %s: instance/name: HTTP %d %q %v", p.IP, n.Name, code, body, err)
			}
			resp, err := p.NS.HTTPClient().Get(fmt.Sprintf("http://%s:10250/pod", podGateway(n.Net.Index)))
			if err != nil {
				t.Errorf("pod %s of %s (late %v): %v", p.IP, n.Name, p == late, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("pod %s of %s: kubelet answered HTTP %d", p.IP, n.Name, resp.StatusCode)
			}
		}
	}
}
