package steer

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Table: 254},
		{Table: 255},
		{Priority: 32766},
		{Priority: -3},
		{Interfaces: []string{"[veth"}},
		{Interfaces: []string{""}},
		{Interfaces: []string{"a-name-that-is-too-long"}},
		{CIDRs: []netip.Prefix{netip.MustParsePrefix("fd00::/64")}},
		{Address: netip.MustParseAddr("fd00::254")},
	} {
		_, err := New(cfg)
		assert.Error(t, err, "%+v", cfg)
	}
	s, err := New(Config{Interfaces: []string{"veth*", "cni0", "eth1"}})
	require.NoError(t, err)
	assert.Equal(t, DefaultTable, s.cfg.Table)
	assert.Equal(t, DefaultPriority, s.cfg.Priority)
	for name, want := range map[string]bool{"veth1234": true, "cni0": true, "eth1": true, "eth0": false, "cni1": false, "vet": false} {
		assert.Equal(t, want, s.matches(name), name)
	}
}

// The root tests build this topology of network namespaces, all named
// after the test process so parallel runs cannot collide:
//
//	pod (eth0 10.77.0.2) ── vpod0 10.77.0.1 ┐
//	pod2 (eth0 10.77.1.2) ─ vpod1 10.77.1.1 ├ node ── up0 10.88.0.1 ── upstream (eth0 10.88.0.2,
//	cidr (eth0 10.99.0.2) ─ other0 10.99.0.1┘                           169.254.169.254 on lo)
//
// The node forwards, so without steering a pod reaches the upstream.
// The agent side (steering plus a listener on 169.254.169.254:80) runs in
// a child process inside the node namespace, as the real agent would.

const helperEnv = "NODETRUST_STEER_TEST_HELPER"

var nsSeq atomic.Int32

type topo struct {
	t                               *testing.T
	node, pod, pod2, cidr, upstream string
}

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
	return string(out)
}

func nsName(role string) string {
	return fmt.Sprintf("ntst-%d-%d-%s", os.Getpid(), nsSeq.Add(1), role)
}

// removeStaleNamespaces deletes namespaces of earlier runs whose process is
// gone (a run killed before its cleanup).
func removeStaleNamespaces() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	re := regexp.MustCompile(`^ntst-(\d+)-\d+-\w+`)
	for _, line := range strings.Split(string(out), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		exec.Command("ip", "netns", "del", m[0]).Run()
	}
}

func addNS(t *testing.T, role string) string {
	t.Helper()
	name := nsName(role)
	ip(t, "netns", "add", name)
	t.Cleanup(func() {
		// The child processes are gone by now (their cleanups ran first);
		// deleting the last reference frees the namespace and its veths.
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete namespace %s: %v: %s", name, err, out)
		}
	})
	ip(t, "-n", name, "link", "set", "lo", "up")
	return name
}

// attach connects ns (eth0 podIP/24) to the node (nodeIf nodeIP/24).
func (tp *topo) attach(ns, nodeIf, nodeIP, podIP string) {
	t := tp.t
	ip(t, "-n", tp.node, "link", "add", nodeIf, "type", "veth", "peer", "name", "eth0", "netns", ns)
	ip(t, "-n", tp.node, "addr", "add", nodeIP+"/24", "dev", nodeIf)
	ip(t, "-n", tp.node, "link", "set", nodeIf, "up")
	ip(t, "-n", ns, "addr", "add", podIP+"/24", "dev", "eth0")
	ip(t, "-n", ns, "link", "set", "eth0", "up")
	ip(t, "-n", ns, "route", "add", "default", "via", nodeIP)
}

func newTopo(t *testing.T) *topo {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2)")
	}
	removeStaleNamespaces()
	tp := &topo{t: t}
	tp.node = addNS(t, "node")
	tp.pod = addNS(t, "pod")
	tp.cidr = addNS(t, "cidr")
	tp.upstream = addNS(t, "up")
	ip(t, "netns", "exec", tp.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	tp.attach(tp.pod, "vpod0", "10.77.0.1", "10.77.0.2")
	tp.attach(tp.cidr, "other0", "10.99.0.1", "10.99.0.2")
	tp.attach(tp.upstream, "up0", "10.88.0.1", "10.88.0.2")
	ip(t, "-n", tp.upstream, "route", "del", "default")
	ip(t, "-n", tp.upstream, "route", "add", "10.0.0.0/8", "via", "10.88.0.1")
	ip(t, "-n", tp.upstream, "addr", "add", "169.254.169.254/32", "dev", "lo")
	ip(t, "-n", tp.node, "route", "add", "169.254.169.254/32", "via", "10.88.0.2")
	tp.start("serve", tp.upstream, "upstream")
	return tp
}

// child is a helper process.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// start runs this test binary as a helper in ns.
func (tp *topo) start(mode, ns string, args ...string) *child {
	t := tp.t
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, os.Args[0], "-test.run=^TestHelperProcess$", "--", mode}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = &testWriter{t: t, prefix: mode + ": "}
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { io.Copy(io.Discard, stdout); cmd.Wait(); close(c.done) }()
	t.Cleanup(func() { c.kill() })
	return c
}

func (c *child) kill() {
	c.cmd.Process.Kill()
	<-c.done
}

// stop asks for a clean stop and waits for it.
func (c *child) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-c.done:
		assert.Equal(t, 0, c.cmd.ProcessState.ExitCode(), "the agent side did not stop cleanly")
	case <-time.After(60 * time.Second):
		t.Fatal("the agent side did not stop within a minute")
	}
}

type testWriter struct {
	t      *testing.T
	prefix string
}

func (w *testWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(w.prefix + l)
	}
	return len(p), nil
}

// get fetches http://169.254.169.254/ from inside ns and returns the body,
// or "" with the error text when it fails.
func get(ns string) (string, error) {
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestHelperProcess$", "--", "get")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// reaches waits until a GET from ns answers want.
func reaches(t *testing.T, ns, want string) {
	t.Helper()
	var last string
	ok := assert.Eventually(t, func() bool {
		got, err := get(ns)
		last = fmt.Sprint(got, err)
		return got == want
	}, 60*time.Second, 50*time.Millisecond)
	if !ok {
		t.Fatalf("from %s, 169.254.169.254 never answered %q; last: %s", ns, want, last)
	}
}

// rules returns the node's rules pointing at the test table, normalised.
func (tp *topo) rules() []string {
	out := ip(tp.t, "-n", tp.node, "-4", "rule", "show", "table", strconv.Itoa(testTable))
	var rs []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			rs = append(rs, l)
		}
	}
	return rs
}

const (
	testTable    = 4242
	testPriority = 4242
)

func TestSteering(t *testing.T) {
	tp := newTopo(t)
	// Before steering, the node forwards pods to the upstream.
	reaches(t, tp.pod, "upstream")
	reaches(t, tp.node, "upstream")

	agent := tp.start("agent", tp.node, "vpod*", "10.99.0.0/24")
	reaches(t, tp.pod, "agent")
	reaches(t, tp.cidr, "agent")
	reaches(t, tp.node, "upstream")
	want := []string{
		fmt.Sprintf("%d:	from all to 169.254.169.254 iif vpod0 lookup %d", testPriority, testTable),
		fmt.Sprintf("%d:	from 10.99.0.0/24 to 169.254.169.254 lookup %d", testPriority, testTable),
	}
	require.Eventually(t, func() bool { return len(tp.rules()) == 2 }, 60*time.Second, 20*time.Millisecond)
	assert.ElementsMatch(t, want, tp.rules())
	assert.Contains(t, ip(t, "-n", tp.node, "route", "show", "table", strconv.Itoa(testTable)), "local 169.254.169.254 dev lo")

	// A pod interface that appears later gets its rule.
	tp.pod2 = addNS(t, "pod2")
	tp.attach(tp.pod2, "vpod1", "10.77.1.1", "10.77.1.2")
	reaches(t, tp.pod2, "agent")
	assert.Contains(t, tp.rules(), fmt.Sprintf("%d:	from all to 169.254.169.254 iif vpod1 lookup %d", testPriority, testTable))
	// And loses it when it goes.
	ip(t, "-n", tp.node, "link", "del", "vpod1")
	require.Eventually(t, func() bool { return len(tp.rules()) == 2 }, 60*time.Second, 20*time.Millisecond)
	assert.ElementsMatch(t, want, tp.rules())

	// An agent killed without cleanup leaves its rules; the next one takes
	// them over as they are: applying again changes nothing.
	agent.kill()
	reaches(t, tp.node, "upstream")
	assert.ElementsMatch(t, want, tp.rules(), "rules survive a crash")
	agent = tp.start("agent", tp.node, "vpod*", "10.99.0.0/24")
	reaches(t, tp.pod, "agent")
	reaches(t, tp.node, "upstream")
	assert.ElementsMatch(t, want, tp.rules(), "restart duplicated or changed rules")

	// A clean stop removes everything: pods reach the upstream again.
	agent.stop(t)
	assert.Empty(t, tp.rules())
	assert.Empty(t, strings.TrimSpace(ip(t, "-n", tp.node, "route", "show", "table", strconv.Itoa(testTable))))
	reaches(t, tp.pod, "upstream")
	reaches(t, tp.node, "upstream")
}

// TestHelperProcess is not a test: it is the helper the root tests run
// inside namespaces.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process for the namespace tests")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(helperMain(args))
}

func helperMain(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	serve := func(ln net.Listener, body string) *http.Server {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })}
		go srv.Serve(ln)
		return srv
	}
	switch args[0] {
	case "get":
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
		resp, err := c.Get("http://169.254.169.254/")
		if err != nil {
			fmt.Println(err)
			return 1
		}
		b, _ := io.ReadAll(resp.Body)
		fmt.Print(string(b))
		return 0
	case "serve":
		ln, err := net.Listen("tcp4", "169.254.169.254:80")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		serve(ln, args[1])
		<-ctx.Done()
		return 0
	case "agent":
		cfg := Config{Table: testTable, Priority: testPriority, Resync: time.Second}
		for _, a := range args[1:] {
			if p, err := netip.ParsePrefix(a); err == nil {
				cfg.CIDRs = append(cfg.CIDRs, p)
			} else {
				cfg.Interfaces = append(cfg.Interfaces, a)
			}
		}
		s, err := New(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ln, err := Listen(ctx, "169.254.169.254:80")
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			return 1
		}
		srv := serve(ln, "agent")
		defer srv.Close()
		if err := s.Run(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "steer:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", args[0])
	return 2
}
