// Command tunnelbench measures nodetrust's reverse tunnels against
// baselines measured in the same run, on loopback, with everything in the
// bench process: the control plane's tunnel server (controlplane/tunnel),
// the agent's tunnel client (agent/tunnel) with certificates from a
// throwaway CA (controlplane/pki), and a sink/source TCP server standing in
// for the kubelet on an allowlisted address.
//
// Each result is measured through the tunnel twice: with
// (*tunnel.Server).DialNode, which is the tunnel itself, and through the
// HTTP CONNECT frontend on its UNIX socket, which adds the frontend's
// splice. The baselines are a direct TCP connection to the same sink and
// raw crypto/tls on one connection to the same sink behind a TLS listener
// (the tunnel's TLS settings, so the same TLS 1.3 cipher suite):
//
//   - bulk: one connection downloads (sink -> client, the direction of
//     logs and exec output) and uploads for -bulk each, after a warm-up;
//   - small: -small sequential 64-byte request/64-byte answer round trips
//     on one reused connection (p50, p99);
//   - small under bulk: the same round trips on a second stream of the
//     same tunnel while a bulk download runs on the first; direct round
//     trips under the same load are the control;
//   - -conns proxied connections opened at once, each doing one round
//     trip and then staying open: time, failures, and memory per idle
//     stream (RSS and Go heap+stacks);
//   - -agents agents' tunnels in this process (both ends): memory per
//     idle tunnel connection.
//
// Run it from the module root:
//
//	go run ./test/bench/tunnelbench
//
// Bulk and small measurements are repeated -runs times (default 3) and
// reported as the median with the range; the targets are checked on the
// medians. The exit status is 0 when every target passes, 1 when one
// fails, 2 on an error. Every phase is bounded in time.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
	"github.com/nodetrust/nodetrust/test/bench/benchkit"

	"github.com/prometheus/client_golang/prometheus"

	agenttunnel "github.com/nodetrust/nodetrust/agent/tunnel"
	"github.com/nodetrust/nodetrust/controlplane/tunnel"
)

type options struct {
	bulk, warm time.Duration
	small      int
	load       time.Duration
	conns      int
	agents     int
	runs       int
	cpuprofile string
}

func main() {
	var o options
	flag.DurationVar(&o.bulk, "bulk", 2*time.Second, "measured duration of each bulk transfer")
	flag.DurationVar(&o.warm, "warm", 300*time.Millisecond, "warm-up before each bulk measurement")
	flag.IntVar(&o.small, "small", 2000, "small round trips per path")
	flag.DurationVar(&o.load, "load", 2*time.Second, "duration of the small-under-bulk measurement")
	flag.IntVar(&o.conns, "conns", 1000, "concurrent proxied connections")
	flag.IntVar(&o.agents, "agents", 200, "agents' tunnels for the memory per idle tunnel")
	flag.IntVar(&o.runs, "runs", 3, "repetitions of the bulk and small measurements")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the bulk phase to this file")
	flag.Parse()
	start := time.Now()
	ok, err := run(o)
	fmt.Printf("\ntotal time %v\n", time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tunnelbench:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// env is everything the bench runs against.
type env struct {
	ca        *benchkit.CA
	srv       *tunnel.Server
	socket    string
	sink      *sink
	tlsSink   *sink
	clientTLS *tls.Config // for the TLS baseline
	node      string
	target    string // the sink as the agent dials it
	srvAddr   string // the tunnel port
	stop      []func()
}

func (e *env) close() {
	for _, f := range slices.Backward(e.stop) {
		f()
	}
}

func run(o options) (bool, error) {
	e, err := setup()
	if err != nil {
		return false, err
	}
	defer e.close()
	fmt.Printf("tunnelbench  %s  GOMAXPROCS=%d  %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.GOMAXPROCS(0), runtime.Version())
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("load average at start: %s", b)
	}

	paths := []path{
		{"direct TCP", e.dialDirect},
		{"raw TLS", e.dialTLS},
		{"tunnel DialNode", e.dialNode},
		{"tunnel CONNECT (unix)", e.dialFrontend},
	}
	if name, err := e.suites(); err == nil {
		fmt.Println("cipher suites:", name)
	}
	res := map[string][]float64{}
	add := func(k string, v float64) { res[k] = append(res[k], v) }
	for r := range o.runs {
		fmt.Printf("run %d/%d\n", r+1, o.runs)
		for _, p := range paths {
			stopProf := startProfile(o.cpuprofile, r == 0 && p.name == "tunnel DialNode")
			down, downCPU, err := bulkCPU(p, 'D', o.warm, o.bulk)
			if err != nil {
				stopProf()
				return false, fmt.Errorf("%s download: %w", p.name, err)
			}
			up, upCPU, err := bulkCPU(p, 'U', o.warm, o.bulk)
			stopProf()
			if err != nil {
				return false, fmt.Errorf("%s upload: %w", p.name, err)
			}
			lat, err := small(p, o.small)
			if err != nil {
				return false, fmt.Errorf("%s small: %w", p.name, err)
			}
			add(p.name+"/down", down)
			add(p.name+"/up", up)
			add(p.name+"/down cpu", float64(downCPU))
			add(p.name+"/up cpu", float64(upCPU))
			add(p.name+"/p50", pct(lat, 50))
			add(p.name+"/p99", pct(lat, 99))
		}
		for _, p := range paths[2:] {
			ld, ctl, err := underLoad(p, paths[0], o.load)
			if err != nil {
				return false, fmt.Errorf("%s small under bulk: %w", p.name, err)
			}
			add(p.name+"/load p50", pct(ld, 50))
			add(p.name+"/load p99", pct(ld, 99))
			add(p.name+"/ctl p50", pct(ctl, 50))
			add(p.name+"/ctl p99", pct(ctl, 99))
		}
	}
	conc := map[string]concResult{}
	for _, p := range paths[2:] {
		c, err := concurrent(p, o.conns)
		if err != nil {
			return false, fmt.Errorf("%s concurrent: %w", p.name, err)
		}
		conc[p.name] = c
	}
	direct, err := concurrent(paths[0], o.conns)
	if err != nil {
		return false, fmt.Errorf("direct concurrent: %w", err)
	}
	idle, err := e.idleAgents(o.agents)
	if err != nil {
		return false, fmt.Errorf("idle agents: %w", err)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("load average at end: %s", b)
	}
	return report(o, res, conc, direct, idle), nil
}

// path is one way to reach the sink.
type path struct {
	name string
	dial func(ctx context.Context) (net.Conn, error)
}

func (e *env) dialDirect(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", e.sink.addr)
}

func (e *env) dialTLS(ctx context.Context) (net.Conn, error) {
	d := tls.Dialer{Config: e.clientTLS}
	return d.DialContext(ctx, "tcp", e.tlsSink.addr)
}

func (e *env) dialNode(ctx context.Context) (net.Conn, error) {
	return e.srv.DialNode(ctx, e.node, e.target)
}

// dialFrontend opens a CONNECT tunnel through the UNIX socket frontend.
func (e *env) dialFrontend(ctx context.Context) (net.Conn, error) {
	_, port, _ := net.SplitHostPort(e.target)
	return tunnelwire.Connect(ctx, "unix", e.socket, e.node+":"+port)
}

// suites reports the TLS version and cipher suite of the baseline and of
// an agent tunnel handshake with the same settings.
func (e *env) suites() (string, error) {
	c, err := e.dialTLS(context.Background())
	if err != nil {
		return "", err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	if err := tc.Handshake(); err != nil {
		return "", err
	}
	st := tc.ConnectionState()
	return fmt.Sprintf("raw TLS %s %s (the tunnel uses the same crypto/tls defaults: TLS 1.3 preferred)",
		tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)), nil
}

func setup() (*env, error) {
	e := &env{node: "node-1"}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	var err error
	if e.ca, err = benchkit.NewCA("tunnelbench CA"); err != nil {
		return nil, err
	}
	serverCert, err := e.ca.Leaf("localhost", nil, true)
	if err != nil {
		return nil, err
	}
	if e.sink, err = startSink(nil); err != nil {
		return nil, err
	}
	e.stop = append(e.stop, e.sink.close)
	if e.tlsSink, err = startSink(&tls.Config{Certificates: []tls.Certificate{*serverCert}, MinVersion: tls.VersionTLS12}); err != nil {
		return nil, err
	}
	e.stop = append(e.stop, e.tlsSink.close)
	e.clientTLS = &tls.Config{RootCAs: e.ca.Pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	e.target = e.sink.addr

	e.srv, err = tunnel.New(tunnel.Config{Certificate: serverCert, ClientCAs: e.ca.Pool,
		Registerer: prometheus.NewRegistry(), DialTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tunnelbench")
	if err != nil {
		ln.Close()
		return nil, err
	}
	e.stop = append(e.stop, func() { os.RemoveAll(dir) })
	e.socket = filepath.Join(dir, "connect.sock")
	uln, err := tunnel.ListenSocket(e.socket)
	if err != nil {
		ln.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx, tunnel.Listeners{TLS: ln, Unix: uln}) }()
	e.stop = append(e.stop, func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			fmt.Fprintln(os.Stderr, "tunnelbench: tunnel server did not stop within 10s")
		}
	})
	e.srvAddr = ln.Addr().String()

	stopAgent, err := e.startAgent(e.node, true)
	if err != nil {
		return nil, err
	}
	e.stop = append(e.stop, stopAgent)
	if err := waitFor(5*time.Second, func() bool { return e.srv.Conns(e.node) > 0 }); err != nil {
		return nil, fmt.Errorf("agent %s did not connect: %w", e.node, err)
	}
	ok = true
	return e, nil
}

// startAgent runs an agent tunnel client for node, allowed to reach the
// sink, and returns its stop function.
func (e *env) startAgent(node string, logWarnings bool) (func(), error) {
	cert, err := e.ca.Leaf("system:node:"+node, []string{"system:nodes"}, false)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.DiscardHandler)
	if logWarnings {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	c, err := agenttunnel.New(agenttunnel.Config{
		Servers: []string{e.srvAddr}, ServerName: "localhost", NodeName: node,
		Allow:             []string{e.target},
		ClientCertificate: func() (*tls.Certificate, error) { return cert, nil },
		Roots:             func() (*x509.CertPool, error) { return e.ca.Pool, nil },
		Registerer:        prometheus.NewRegistry(),
		Logger:            log,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			fmt.Fprintf(os.Stderr, "tunnelbench: agent %s did not stop within 10s\n", node)
		}
	}, nil
}

func waitFor(d time.Duration, cond func() bool) error {
	for end := time.Now().Add(d); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(end) {
			return fmt.Errorf("not within %v", d)
		}
	}
	return nil
}
