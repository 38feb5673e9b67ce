//go:build linux

package machine

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/test/e2e"
)

// probeScript runs in the guest after boot: it waits for the agent, writes
// what the test checks to the results disk (/dev/vdb) and powers off.
const probeScript = `#!/bin/sh
# nodetrust machine-test probe (test/machine/vm_test.go), ordered after
# nodetrust-online.target as a consumer of the node identity would be.
at_start=$(systemctl is-active nodetrust-agent.service)
# Until active, failed, or back to inactive after a start (a skipped
# condition); a restart in between shows as activating.
for i in $(seq 1 150); do
	state=$(systemctl is-active nodetrust-agent.service)
	[ "$state" = active ] || [ "$state" = failed ] && break
	if [ "$state" = inactive ] && [ "$(systemctl show -p InactiveExitTimestampMonotonic --value nodetrust-agent.service)" != 0 ]; then
		break
	fi
	sleep 1
done
out=/run/nodetrust-probe.txt
{
	echo "uptime: $(cut -d' ' -f1 /proc/uptime)"
	echo "at-start: $at_start"
	echo "is-active: $(systemctl is-active nodetrust-agent.service)"
	echo "online-target: $(systemctl is-active nodetrust-online.target)"
	systemctl show -p ActiveEnterTimestampMonotonic -p NRestarts -p Result -p User nodetrust-agent.service | sed 's/=/: /'
	pid=$(systemctl show -p MainPID --value nodetrust-agent.service)
	echo "uid: $(awk '/^Uid:/ {print $2}' /proc/$pid/status)"
	echo "capeff: $(awk '/^CapEff:/ {print $2}' /proc/$pid/status)"
	echo "kernel: $(uname -r)"
	echo "eth0: $(ip -4 -br addr show dev eth0)"
	for f in /var/lib/nodetrust/pki/*; do echo "file: $(stat -c '%a %U' "$f") $f"; done
	echo "status-json: $(nodetrust status --json | tr -d '\n')"
	echo "--- journal"
	journalctl -u nodetrust-agent.service -o short-monotonic --no-pager | tail -n 40
} >$out 2>&1
cat $out >/dev/vdb
sync
echo "NODETRUST-PROBE-DONE is-active=$(systemctl is-active nodetrust-agent.service)"
systemctl poweroff
`

const probeUnit = `[Unit]
Description=nodetrust machine-test probe
Wants=nodetrust-online.target
After=nodetrust-online.target

[Service]
Type=oneshot
TimeoutStartSec=300
ExecStart=/usr/local/sbin/nodetrust-probe
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
`

// TestVM boots a real kernel (QEMU, TCG) from the root file system with
// the agent's .deb installed and configured, as docs/vm-e2e.md's recipe
// does: slirp user networking forwards the guest's 169.254.169.254:80 to a
// metadata server on the host's loopback, and the guest reaches the
// control plane there as 169.254.0.2 (a SAN of its certificate). The host
// side is a network namespace of the test's own. The guest's probe unit
// reports whether the agent bootstrapped and reached READY on boot.
func TestVM(t *testing.T) {
	f := getFixture(t, "qemu-system-x86_64", "mke2fs", "busybox")
	k, err := HostKernel()
	if err != nil {
		t.Skipf("no kernel to boot: %v", err)
	}
	host := startVMHost(t, f.OldBin)
	dir, err := os.MkdirTemp(workDir, "vm-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })

	start := time.Now()
	image := filepath.Join(dir, "root.img")
	require.NoError(t, prepareVMImage(f, k, filepath.Join(dir, "ov"), image))
	t.Logf("guest image with the agent installed in %v", time.Since(start).Round(100*time.Millisecond))

	results := filepath.Join(dir, "results.img")
	require.NoError(t, os.WriteFile(results, make([]byte, 1<<20), 0o644))
	console := filepath.Join(dir, "console.log")
	took, err := RunVM(context.Background(), VMOptions{
		Kernel: k, Image: image, Results: results, Console: console,
		Netdev: vmNetdev(), Start: host.NS.Start,
	}, 6*time.Minute)
	require.NoError(t, err)
	t.Logf("VM booted, probed and powered off in %v", took.Round(100*time.Millisecond))

	out, err := ReadResults(results)
	require.NoError(t, err)
	r := parseProbe(out)
	if t.Failed() || r["is-active"] != "active" {
		t.Logf("probe results:\n%s\nconsole tail:\n%s", out, fileTail(console, 3000))
	}
	require.Equal(t, "active", r["is-active"], "nodetrust-agent.service in the guest")
	t.Logf("guest %s: agent active (READY) at %.1f s of uptime, probe at %s s; %s", r["kernel"],
		float64(atoiOr(r["ActiveEnterTimestampMonotonic"], 0))/1e6, r["uptime"], r["eth0"])
	assert.Equal(t, "active", r["at-start"], "a unit ordered after nodetrust-online.target must start after READY")
	assert.Equal(t, "active", r["online-target"])
	assert.Equal(t, "0", r["NRestarts"])
	assert.Equal(t, "nodetrust", r["User"])
	assert.NotEqual(t, "0", r["uid"], "the agent must not run as root")
	assert.Equal(t, "0000000000001400", r["capeff"], "CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only")
	var st agent.Status
	require.NoError(t, json.Unmarshal([]byte(r["status-json"]), &st), "status --json: %q", r["status-json"])
	cr, ok := e2e.ClientCredential(&st)
	require.True(t, ok, "no client credential in %+v", st)
	assert.True(t, st.Healthy)
	assert.Equal(t, "valid", cr.State)
	assert.Equal(t, "CN=system:node:"+vmNodeName+",O=system:nodes", cr.Subject)
	var keys int
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, "file: "); ok && strings.Contains(rest, "kubelet-client-20") {
			keys++
			assert.True(t, strings.HasPrefix(rest, "600 nodetrust "), "credential file in the guest: %s", rest)
		}
	}
	assert.NotZero(t, keys, "no dated credential file listed:\n%s", out)
}

// prepareVMImage installs the old version's agent packages into an
// overlay of the cached root (systemd-nspawn without --boot: maintainer
// scripts see no running systemd), configures it, adds the probe and
// writes the ext4 image.
func prepareVMImage(f *fixture, k Kernel, ovDir, image string) error {
	root, unmountRoot, err := NewRoot(f.Lower, ovDir)
	if err != nil {
		return err
	}
	defer unmountRoot()
	if err := PrepareGuest(root, k, vmNodeName); err != nil {
		return err
	}
	debs := []string{"/pkgs/" + filepath.Base(f.Old.Path("nodetrust", "deb")), "/pkgs/" + filepath.Base(f.Old.Path("nodetrust-agent", "deb"))}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "systemd-nspawn", append([]string{"--quiet", "--register=no", "--keep-unit",
		"--private-network", "--directory=" + root, "--bind-ro=" + f.Old.Dir + ":/pkgs", "--setenv=DEBIAN_FRONTEND=noninteractive",
		"dpkg", "-i"}, debs...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg -i in the guest root: %w: %s", err, out)
	}
	if err := appendFile(filepath.Join(root, agentConf), vmAgentConfig()); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "usr/local/sbin/nodetrust-probe"), []byte(probeScript), 0o755); err != nil {
		return err
	}
	unit := filepath.Join(root, "etc/systemd/system/nodetrust-probe.service")
	if err := os.WriteFile(unit, []byte(probeUnit), 0o644); err != nil {
		return err
	}
	if err := os.Symlink("/etc/systemd/system/nodetrust-probe.service",
		filepath.Join(root, "etc/systemd/system/multi-user.target.wants/nodetrust-probe.service")); err != nil {
		return err
	}
	return MakeImage(root, image, "1G")
}

// parseProbe reads the "key: value" lines of the probe's results.
func parseProbe(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		if l == "--- journal" {
			break
		}
		if k, v, ok := strings.Cut(l, ": "); ok {
			if _, seen := m[k]; !seen {
				m[k] = strings.TrimSpace(v)
			}
		}
	}
	return m
}

func atoiOr(s string, def int64) int64 {
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		return def
	}
	return n
}
