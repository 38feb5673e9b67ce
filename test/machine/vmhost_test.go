//go:build linux

package machine

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/test/e2e"
)

// The VM's view of its host with slirp's net=169.254.0.0/16,host=169.254.0.2:
// the host's loopback (of the namespace QEMU runs in) is 169.254.0.2.
const (
	vmHostIP       = "169.254.0.2"
	vmAPIPort      = 6443
	vmTunnelPort   = 8132
	vmMetadataPort = 8099
	vmNodeName     = "node-1"
)

// vmHost is what docs/vm-e2e.md's recipe runs on the host, in a network
// namespace of the test's own: the control plane (signer, API with the
// tunnel server) and the metadata server on its loopback, with a bootstrap
// token for node-1. QEMU runs in the same namespace.
type vmHost struct {
	NS    *e2e.Namespace
	Dir   string
	procs []*e2e.Process
}

var vmHostSeq atomic.Int64

func startVMHost(t *testing.T, bin string) *vmHost {
	t.Helper()
	ns, err := e2e.NewNamespace(fmt.Sprintf("%s%d-vmhost-%d", e2e.Prefix, os.Getpid(), vmHostSeq.Add(1)))
	require.NoError(t, err)
	h := &vmHost{NS: ns}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range h.procs {
				t.Logf("---- %s (last 3 KiB of %s) ----\n%s", p.Name, p.Log, p.Tail(3072))
			}
		}
		for i := len(h.procs) - 1; i >= 0; i-- {
			h.procs[i].Stop(3 * time.Second)
		}
		if err := ns.Delete(); err != nil {
			t.Errorf("delete %s: %v", ns.Name, err)
		}
	})
	h.Dir, err = os.MkdirTemp(workDir, "vmhost-")
	require.NoError(t, err)
	cp := filepath.Join(h.Dir, "cp")
	run := func(args ...string) string {
		t.Helper()
		out, err := ns.Run(exec.Command(bin, args...))
		require.NoError(t, err, "nodetrust %s: %s", strings.Join(args, " "), out)
		return strings.TrimSpace(string(out))
	}
	start := func(name string, args ...string) *e2e.Process {
		t.Helper()
		p, err := e2e.StartProcess(ns, name, filepath.Join(h.Dir, name+".log"), bin, args...)
		require.NoError(t, err)
		h.procs = append(h.procs, p)
		return p
	}
	run("controlplane", "init", "--data-dir", cp, "--san", vmHostIP)
	signer := start("signer", "controlplane", "signer", "--data-dir", cp)
	waitProc(t, 20*time.Second, "signer socket", signer, func() error {
		_, err := os.Stat(filepath.Join(cp, "run", "signer.sock"))
		return err
	})
	api := start("api", "controlplane", "--data-dir", cp,
		"--listen", fmt.Sprintf("127.0.0.1:%d", vmAPIPort), "--tunnel-listen", fmt.Sprintf("127.0.0.1:%d", vmTunnelPort))
	var token string
	waitProc(t, 30*time.Second, "bootstrap token from the API", api, func() error {
		out, err := ns.Run(exec.Command(bin, "controlplane", "token", "create", "--data-dir", cp, "--ttl", "1h", "--description", "vm"))
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		token = strings.TrimSpace(string(out))
		return nil
	})
	caPEM, err := os.ReadFile(filepath.Join(cp, "pki", "ca.crt"))
	require.NoError(t, err)
	data := metadata.Data{
		Project: metadata.Project{ProjectID: "vm-e2e", NumericProjectID: 1},
		Instances: []metadata.Instance{{
			Name: vmNodeName, ID: 1, Zone: "local-a", Hostname: vmNodeName + ".c.vm-e2e.internal",
			Attributes: map[string]string{
				"nodetrust-bootstrap-token": token,
				"kube-env":                  "CA_CERT: " + base64.StdEncoding.EncodeToString(caPEM) + "\n",
			},
			// The guest's requests arrive from the guestfwd's nc on loopback.
			HostAddresses: []string{"127.0.0.1"},
		}},
	}
	b, err := yaml.Marshal(data)
	require.NoError(t, err)
	dataFile := filepath.Join(h.Dir, "metadata.yaml")
	require.NoError(t, os.WriteFile(dataFile, b, 0o600))
	md := start("metadata", "metadata", "--listen", fmt.Sprintf("127.0.0.1:%d", vmMetadataPort), "--data", dataFile)
	waitProc(t, 20*time.Second, "metadata server", md, func() error {
		c, err := ns.DialContext(t.Context(), "tcp", fmt.Sprintf("127.0.0.1:%d", vmMetadataPort))
		if err == nil {
			c.Close()
		}
		return err
	})
	return h
}

// vmAgentConfig is what the test appends to the guest's agent.yaml.
func vmAgentConfig() string {
	return fmt.Sprintf("\n# machine test: set by the administrator\nserver: https://%s:%d\ntunnel:\n  servers: [\"%s:%d\"]\n",
		vmHostIP, vmAPIPort, vmHostIP, vmTunnelPort)
}

// vmNetdev is QEMU's slirp network: the guest's 169.254.169.254:80 goes to
// the metadata server on the namespace's loopback.
func vmNetdev() string {
	return fmt.Sprintf("user,id=n0,net=169.254.0.0/16,host=%s,guestfwd=tcp:%s:80-cmd:busybox nc 127.0.0.1 %d",
		vmHostIP, e2e.MetadataIP, vmMetadataPort)
}

// waitProc polls fn every 100 ms until it succeeds, failing the test after
// timeout or at once if p exits.
func waitProc(t *testing.T, timeout time.Duration, what string, p *e2e.Process, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if done, perr := p.Exited(); done {
			t.Fatalf("%s: %s exited (%v); last error: %v\n%s", what, p.Name, perr, err, p.Tail(2048))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
