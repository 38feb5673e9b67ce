//go:build linux

package machine

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/test/e2e"
)

const (
	agentUnit  = "nodetrust-agent.service"
	agentConf  = "/etc/nodetrust/agent.yaml"
	agentState = "/var/lib/nodetrust"
)

// startCluster starts a metadata host (metadata server, signer, API with
// the tunnel server) and one node namespace, node-a, whose metadata holds
// a bootstrap token; the kubelet-like endpoint :10250 in node-a's
// namespace answers through the tunnel once the agent's tunnel is up.
func startCluster(t *testing.T, f *fixture) *e2e.Cluster {
	t.Helper()
	c := e2e.StartCluster(t, e2e.ClusterOptions{Binary: f.OldBin, Topology: e2e.TopologyOptions{Nodes: 1}})
	c.Nodes[0].ServeKubelet(t)
	return c
}

// adminConfig is what the test appends to the packaged agent.yaml, as an
// administrator would: the control plane of the cluster.
func adminConfig() string {
	return fmt.Sprintf("\n# machine test: set by the administrator\nserver: https://%s:%d\ntunnel:\n  servers: [\"%s:%d\"]\n",
		e2e.HostIP, e2e.APIPort, e2e.HostIP, e2e.TunnelPort)
}

// bootNode boots a container in node-a's network namespace with both
// versions' packages at /pkgs/old and /pkgs/new.
func bootNode(t *testing.T, f *fixture, c *e2e.Cluster, name string) *Container {
	t.Helper()
	dir, err := os.MkdirTemp(workDir, name+"-")
	require.NoError(t, err)
	start := time.Now()
	ct, err := BootContainer(ContainerOptions{
		Name: name, Lower: f.Lower, Dir: dir,
		NetNS: "/run/netns/" + c.Nodes[0].Net.NS.Name,
		Binds: []string{"--bind-ro=" + f.Old.Dir + ":/pkgs/old", "--bind-ro=" + f.New.Dir + ":/pkgs/new"},
	}, 60*time.Second)
	require.NoError(t, err)
	t.Logf("%s booted in %v", name, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := ct.Run(context.Background(), "journalctl", "--no-pager", "-o", "short-monotonic", "-n", "60", "-u", agentUnit)
			t.Logf("---- journal of %s in %s ----\n%s", agentUnit, name, out)
		}
		if err := ct.Stop(); err != nil {
			t.Errorf("stop %s: %v", name, err)
		}
		os.RemoveAll(dir)
	})
	return ct
}

// ctxT is a context bounded by d that ends with the test.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// show returns systemctl show properties of a unit.
func show(t *testing.T, ct *Container, unit string, props ...string) map[string]string {
	t.Helper()
	out, err := ct.Run(ctxT(t, 30*time.Second), "systemctl", "show", "--property="+strings.Join(props, ","), unit)
	require.NoError(t, err)
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(l, "=")
		m[k] = v
	}
	return m
}

// isEnabled is `systemctl is-enabled unit` (read from the unit files now;
// systemctl show's UnitFileState is cached until the next daemon-reload).
func isEnabled(t *testing.T, ct *Container, unit string) string {
	t.Helper()
	out, _ := ct.Run(ctxT(t, 30*time.Second), "systemctl", "is-enabled", unit) // exits 1 when disabled
	return strings.TrimSpace(string(out))
}

// dpkgInstall installs packages from /pkgs/<which> inside the container.
func dpkgInstall(t *testing.T, ct *Container, p *Packages, which string, names ...string) {
	t.Helper()
	args := []string{"dpkg", "-i"}
	for _, n := range names {
		args = append(args, "/pkgs/"+which+"/"+filepath.Base(p.Path(n, "deb")))
	}
	start := time.Now()
	out, err := ct.Run(ctxT(t, 2*time.Minute), args...)
	require.NoError(t, err)
	t.Logf("dpkg -i %s %s: %v", which, strings.Join(names, " "), time.Since(start).Round(time.Millisecond))
	_ = out
}

// userIDs returns the uid and gid of user in the container's passwd.
func userIDs(t *testing.T, ct *Container, user string) (int, int) {
	t.Helper()
	b, err := os.ReadFile(ct.Path("/etc/passwd"))
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ":")
		if len(f) > 3 && f[0] == user {
			uid, _ := strconv.Atoi(f[2])
			gid, _ := strconv.Atoi(f[3])
			return uid, gid
		}
	}
	t.Fatalf("no user %s in %s's /etc/passwd", user, ct.Name)
	return 0, 0
}

// agentStatus runs `nodetrust status --json` inside the container.
func agentStatus(ct *Container) (*agent.Status, error) {
	out, err := ct.Run(context.Background(), "nodetrust", "status", "--json")
	if err != nil {
		return nil, err
	}
	var s agent.Status
	if err := json.Unmarshal(out, &s); err != nil {
		return nil, fmt.Errorf("status --json: %w: %s", err, out)
	}
	return &s, nil
}

// clientCert is the client credential of a healthy status, or an error.
func clientCert(ct *Container) (agent.CredentialStatus, error) {
	s, err := agentStatus(ct)
	if err != nil {
		return agent.CredentialStatus{}, err
	}
	cr, ok := e2e.ClientCredential(s)
	if !ok || cr.State != "valid" || !s.Healthy {
		return cr, fmt.Errorf("not certified yet: healthy=%v client=%+v", s.Healthy, cr)
	}
	return cr, nil
}

// eventually polls fn every 200 ms until it succeeds, failing the test
// with its last error after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
