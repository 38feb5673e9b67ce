package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// smallValue is the attribute the GET benchmark reads, 10 bytes like the
// baseline's body.
const smallValue = "hello-meta"

const (
	smallPath = "/computeMetadata/v1/instance/attributes/small-key"
	watchPath = "/computeMetadata/v1/instance/attributes/watch-key"
)

// watchValue is instance i's watch-key in generation gen.
func watchValue(gen, i int) string { return fmt.Sprintf("gen-%d-node-%02d", gen, i) }

// watchAddr is the host address of watch instance i (1-based).
func watchAddr(i int) string { return fmt.Sprintf("127.0.10.%d", i) }

// dataFile renders a data file: instance bench-host, whose host address is
// 127.0.0.1, and n watch instances node-01..node-NN with host addresses
// 127.0.10.1..127.0.10.N, each shaped like a real node's entry (interface,
// service account with a token, kube-env, bootstrap token, a dozen
// attributes). gen is the generation of every watch-key value.
func dataFile(gen, n int) []byte {
	var b strings.Builder
	b.WriteString(`project:
  projectId: bench-project
  numericProjectId: 123456789012
  attributes:
    cluster-name: bench
    enable-oslogin: "FALSE"
    ssh-keys: "bench:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench bench"
instances:
`)
	kubeEnv := strings.Repeat("KUBE_ENV_LINE: c2FtcGxlLXZhbHVlLXRoYXQtbG9va3MtbGlrZS1iYXNlNjQ=\n", 24)
	inst := func(name, host, pods string, i int, extra string) {
		fmt.Fprintf(&b, `  - name: %s
    id: %d
    zone: europe-west1-b
    hostname: %s.c.bench-project.internal
    machineType: e2-standard-2
    tags: [nodetrust, node]
    networkInterfaces:
      - ip: 10.128.%d.%d
        mac: 42:01:0a:80:%02x:%02x
        network: projects/123456789012/networks/default
        gateway: 10.128.0.1
        subnetmask: 255.255.0.0
        mtu: 1460
        dnsServers: [169.254.169.254]
    serviceAccounts:
      default:
        email: %s@bench-project.iam.gserviceaccount.com
        scopes: [https://www.googleapis.com/auth/cloud-platform]
        token:
          accessToken: ya29.bench-token-%s
          expiresIn: 3599
    attributes:
%s      cluster-location: europe-west1
      cluster-uid: 0f1e2d3c4b5a69788796a5b4c3d2e1f0
      created-by: projects/123456789012/zones/europe-west1-b/instanceGroupManagers/bench
      enable-oslogin: "false"
      gce-container-declaration: ""
      google-compute-enable-pcid: "true"
      kubelet-config: "kind: KubeletConfiguration"
      nodetrust-bootstrap-token: abcdef.0123456789abcdef
      kube-env: |
%s    hostAddresses: ["%s"]
    podRanges: ["%s"]
`, name, 1000+i, name, i/250, i%250+2, i/256, i%256, name, name, extra,
			indent(kubeEnv, "        "), host, pods)
	}
	inst("bench-host", "127.0.0.1", "127.0.1.0/24", 0, "      small-key: "+smallValue+"\n")
	for i := 1; i <= n; i++ {
		inst(fmt.Sprintf("node-%02d", i), watchAddr(i), fmt.Sprintf("127.20.%d.0/24", i), i,
			"      watch-key: "+watchValue(gen, i)+"\n")
	}
	return []byte(b.String())
}

func indent(s, p string) string {
	lines := strings.SplitAfter(s, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString(p)
			b.WriteString(l)
		}
	}
	return b.String()
}

// writeAtomic replaces path with b: a temporary file renamed over it.
func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".data-*.yaml")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
