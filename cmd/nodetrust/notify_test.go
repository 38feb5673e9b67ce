package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/harness"
)

// notifySocket binds a unixgram socket, sets NOTIFY_SOCKET to it and
// returns a channel of the messages received.
func notifySocket(t *testing.T) (path string, msgs <-chan string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	ch := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 8192)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return path, ch
}

// expect waits for a message starting with prefix, skipping others.
func expect(t *testing.T, msgs <-chan string, prefix string) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	var seen []string
	for {
		select {
		case m := <-msgs:
			if strings.HasPrefix(m, prefix) {
				return m
			}
			seen = append(seen, m)
		case <-timeout:
			t.Fatalf("no message starting %q; got %q", prefix, seen)
		}
	}
}

func TestAgentNotifyAndReload(t *testing.T) {
	env := harness.Start(t, harness.Options{Clock: clock.Real{}})
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	body := "server: " + env.APIURL + "\nstateDir: " + state + "\nmetadata:\n  host: " + env.MDAddr + "\n"
	require.NoError(t, os.WriteFile(cfg, []byte(body), 0o600))
	sock, msgs := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "2000000") // 2s: pings every second, heartbeat every 500ms
	t.Setenv("WATCHDOG_PID", "")
	t.Setenv("RUNTIME_DIRECTORY", t.TempDir())

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agentCtx, stopAgent := context.WithCancel(ctx)
	done := make(chan int, 1)
	var agentErr strings.Builder
	go func() {
		code := runMain(agentCtx, &cmdEnv{stdout: io.Discard, stderr: &syncWriter{w: &agentErr}}, []string{"agent", "--config", cfg})
		done <- code
	}()

	ready := expect(t, msgs, "READY=1")
	assert.Contains(t, ready, "STATUS=ready: client cert valid until")
	expect(t, msgs, "WATCHDOG=1")
	expect(t, msgs, "WATCHDOG=1") // pinged again: the loop keeps beating

	// A valid change: applied live, RELOADING=1 then READY=1.
	require.NoError(t, os.WriteFile(cfg, []byte(body+"checkInterval: 30s\ntunnel: {serverName: cp.example}\n"), 0o600))
	start := time.Now()
	code, out, errOut := run(t, ctx, "agent", "reload", "--pid", strconv.Itoa(os.Getpid()), "--timeout", "30s")
	require.Equal(t, 0, code, errOut)
	t.Logf("agent reload took %v", time.Since(start).Round(time.Millisecond))
	assert.Contains(t, out, "applied: checkInterval; need a restart: tunnel.serverName")
	m := expect(t, msgs, "RELOADING=1")
	assert.Regexp(t, `^RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=reloading configuration$`, m)
	assert.Contains(t, expect(t, msgs, "READY=1"), "STATUS=ready: ")

	// A bad file: rejected, the error names file, line and key; the agent
	// keeps running and says so in STATUS.
	require.NoError(t, os.WriteFile(cfg, []byte(body+"chekInterval: 30s\n"), 0o600))
	code, _, errOut = run(t, ctx, "agent", "reload", "--pid", strconv.Itoa(os.Getpid()), "--timeout", "30s")
	require.Equal(t, 1, code)
	for _, want := range []string{"rejected", cfg, "line 5", "chekInterval"} {
		assert.Contains(t, errOut, want)
	}
	expect(t, msgs, "RELOADING=1")
	assert.Contains(t, expect(t, msgs, "READY=1"), "last reload failed, old configuration in use")

	stopAgent()
	require.Equal(t, 0, <-done, agentErr.String())
	expect(t, msgs, "STOPPING=1")
	assert.NotContains(t, agentErr.String(), env.Token[7:], "the bootstrap secret was logged")
}

func TestAgentReloadUsage(t *testing.T) {
	code, _, errOut := run(t, context.Background(), "agent", "reload")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "--pid is required")
	code, out, _ := run(t, context.Background(), "agent", "reload", "--help")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "Example:\n  nodetrust agent reload --pid $MAINPID")
	// A process that never answers: a clear timeout, naming the file.
	cmd := exec.Command("sleep", "30")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	t.Setenv("RUNTIME_DIRECTORY", t.TempDir())
	code, _, errOut = run(t, context.Background(), "agent", "reload", "--pid", strconv.Itoa(cmd.Process.Pid), "--timeout", "300ms")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "agent-reload.json")
}

// TestHelperProcess runs runMain with the arguments after "--" when
// NODETRUST_HELPER is set: the socket-activation test execs it so the
// listener arrives as fd 3 with LISTEN_PID set to the process's own pid.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("NODETRUST_HELPER") != "1" {
		t.Skip("helper process for other tests")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, &cmdEnv{stdout: os.Stdout, stderr: os.Stderr}, args))
}

func TestMetadataSocketActivation(t *testing.T) {
	data := filepath.Join(t.TempDir(), "md.yaml")
	good := "project:\n  projectId: proj-1\ninstances:\n  - name: node-1\n    hostAddresses: [127.0.0.1]\n"
	require.NoError(t, os.WriteFile(data, []byte(good), 0o600))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f, err := ln.(*net.TCPListener).File()
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close() // the child holds the socket through f
	sock, msgs := notifySocket(t)
	t.Setenv("RUNTIME_DIRECTORY", t.TempDir()) // for the child and for 'metadata reload'

	// sh sets LISTEN_PID to its own pid, which exec keeps, as systemd does.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, os.Args[0], "-test.run=^TestHelperProcess$", "--",
		"metadata", "--data", data, "--listen", "127.0.0.1:1")
	cmd.Env = append(os.Environ(), "NODETRUST_HELPER=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=metadata", "NOTIFY_SOCKET="+sock)
	cmd.ExtraFiles = []*os.File{f}
	stderr := &syncWriter{w: &strings.Builder{}}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	f.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	assert.Contains(t, expect(t, msgs, "READY=1"), "STATUS=serving metadata on "+addr+": 1 instances")
	get := func() (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/computeMetadata/v1/project/project-id", nil)
		req.Header.Set("Metadata-Flavor", "Google")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get()
	require.Equal(t, 200, code, body)
	assert.Equal(t, "proj-1", body)

	// 'metadata reload' with a broken file: RELOADING=1, READY=1 naming
	// the error, exit 1 with the error; the old data is still served.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pid := strconv.Itoa(cmd.Process.Pid)
	require.NoError(t, os.WriteFile(data, []byte(good+"    hostAdresses: [x]\n"), 0o600))
	rc, _, errOut := run(t, ctx, "metadata", "reload", "--pid", pid)
	assert.Equal(t, 1, rc)
	assert.Contains(t, errOut, data)
	assert.Contains(t, errOut, "hostAdresses")
	assert.Regexp(t, `^RELOADING=1\nMONOTONIC_USEC=\d+\n`, expect(t, msgs, "RELOADING=1"))
	assert.Contains(t, expect(t, msgs, "READY=1"), "failed, old data in use")
	code, body = get()
	require.Equal(t, 200, code, body)
	assert.Equal(t, "proj-1", body)

	// A good file: exit 0, new data served.
	require.NoError(t, os.WriteFile(data, []byte(strings.Replace(good, "proj-1", "proj-2", 1)), 0o600))
	rc, out, errOut := run(t, ctx, "metadata", "reload", "--pid", pid)
	require.Equal(t, 0, rc, errOut)
	assert.Contains(t, out, "reloaded") // applied, or unchanged when the file watcher was first
	expect(t, msgs, "READY=1")
	code, body = get()
	require.Equal(t, 200, code, body)
	assert.Equal(t, "proj-2", body)

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	expect(t, msgs, "STOPPING=1")
	require.NoError(t, cmd.Wait(), stderr.String())
	assert.Contains(t, stderr.String(), "using the sockets systemd passed")
}

// syncWriter is an io.Writer safe for concurrent use.
type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func TestAgentConfigured(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		path string
		code int
		want string
	}{
		{"no file", filepath.Join(dir, "missing.yaml"), 1, "does not exist"},
		{"as shipped: comments only", write("shipped.yaml", "# server: https://10.0.0.2:6443\n"), 1, "set \"server\""},
		{"server set", write("ok.yaml", "server: https://10.0.0.2:6443\n"), 0, "is configured"},
		{"server set, mistakes elsewhere: the agent reports them", write("bad.yaml", "server: https://10.0.0.2:6443\nchekInterval: 1m\n"), 0, "is configured"},
		{"not YAML: the agent reports it", write("garbage.yaml", "{{{"), 0, "is configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run(t, context.Background(), "agent", "configured", "--config", tt.path)
			if code != tt.code || !strings.Contains(out+errOut, tt.want) {
				t.Fatalf("exit %d (want %d), output %q %q: want %q", code, tt.code, out, errOut, tt.want)
			}
		})
	}
}
