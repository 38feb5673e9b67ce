package main

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the demo start its signer process from the test binary:
// the demo re-executes itself (os.Executable) with demoSignerEnv set.
func TestMain(m *testing.M) {
	if os.Getenv(demoSignerEnv) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		os.Exit(runMain(ctx, &cmdEnv{stdout: os.Stdout, stderr: os.Stderr}, []string{"demo"}))
	}
	os.Exit(m.Run())
}

func TestDemoTellsTheWholeStory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	code, out, errOut := run(t, ctx, "demo", "--cert-lifetime", "10s")
	if code != 0 {
		t.Fatalf("demo exited %d: %s\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"signer process (pid",
		"read its bootstrap secret from the metadata host view",
		"created CSR node-csr-",
		"AutoApproved); signer process signed it",
		"client certificate written (bootstrap)",
		"the pod view never contained the token",
		"through node-1's tunnel: \"ok: kubelet of node-1",
		"refused by the agent's allowlist",
		"client certificate written (renew)",
		"new tunnel up, the old one drains",
		"log stream unbroken: true",
		"$ nodetrust controlplane rotate start",
		"client certificate is not from the active CA: re-issuing it now",
		"serving certificates moved to it (phase update-servers)",
		"$ nodetrust controlplane rotate complete",
		"both nodes trust only the new CA",
		"issued by     CN=nodetrust-cluster-ca-1",
		"0 failed",
		"$ nodetrust status   # on node-2",
		"done: every component stopped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
	t.Logf("demo took %v", time.Since(start).Round(time.Millisecond))
}

func TestDemoInterruptedLeavesNothing(t *testing.T) {
	tmp := t.TempDir() // the demo's folder goes here, so other runs' folders do not count
	t.Setenv("TMPDIR", tmp)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(time.Second)
		cancel()
	}()
	code, out, errOut := run(t, ctx, "demo")
	if code != 0 {
		t.Fatalf("interrupted demo exited %d: %s\n%s", code, errOut, out)
	}
	if !strings.Contains(out, "interrupted: stopping every component") {
		t.Errorf("no interruption notice:\n%s", out)
	}
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
}
