// Command konnbench compares the agent's two tunnel modes on loopback, in
// one process and one run: the nodetrust tunnel (controlplane/tunnel
// server and agent/tunnel client, reached through its HTTP CONNECT
// frontend on a UNIX socket, and with (*tunnel.Server).DialNode) and the
// konnectivity mode (an unmodified konnectivity-server, pkg/server of
// sigs.k8s.io/apiserver-network-proxy, with the agent/konnectivity client,
// reached through the stock server's HTTP CONNECT frontend on TCP), with a
// direct TCP connection to the same sink as the baseline. Certificates
// come from a throwaway CA (controlplane/pki); both agents use mTLS.
//
// For each path it measures the bulk throughput of one connection
// downloading from the sink (-bulk after -warm) and the latency of -small
// sequential 64-byte round trips on one reused connection (p50, p99). Each
// measurement is repeated -runs times (default 3); the table shows medians
// and the ratio to direct TCP. Run it from the module root:
//
//	go run ./test/bench/konnbench
//
// The stock server's klog output is discarded. Every phase is bounded in
// time; the whole run takes about 30 s. The exit
// status is 0 on success and 2 on an error.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
	"github.com/nodetrust/nodetrust/test/bench/benchkit"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	agentproto "sigs.k8s.io/apiserver-network-proxy/proto/agent"

	"sigs.k8s.io/apiserver-network-proxy/pkg/server"
	"sigs.k8s.io/apiserver-network-proxy/pkg/server/proxystrategies"

	"k8s.io/klog/v2"

	"github.com/nodetrust/nodetrust/agent/konnectivity"
	agenttunnel "github.com/nodetrust/nodetrust/agent/tunnel"
	"github.com/nodetrust/nodetrust/controlplane/tunnel"
)

type options struct {
	bulk, warm time.Duration
	small      int
	runs       int
}

func main() {
	var o options
	flag.DurationVar(&o.bulk, "bulk", 2*time.Second, "measured duration of each bulk download")
	flag.DurationVar(&o.warm, "warm", 300*time.Millisecond, "warm-up before each bulk measurement")
	flag.IntVar(&o.small, "small", 2000, "small round trips per path and run")
	flag.IntVar(&o.runs, "runs", 3, "repetitions of every measurement")
	flag.Parse()
	quietKlog()
	start := time.Now()
	err := run(o)
	fmt.Printf("\ntotal time %v\n", time.Since(start).Round(100*time.Millisecond))
	if err != nil {
		fmt.Fprintln(os.Stderr, "konnbench:", err)
		os.Exit(2)
	}
}

const node = "node-1"

// quietKlog drops the stock server's klog output: it logs every write to
// a frontend connection the bench has already closed, once per chunk.
func quietKlog() {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	fs.Set("logtostderr", "false")
	fs.Set("stderrthreshold", "FATAL")
	klog.SetOutput(io.Discard)
}

// env is everything the bench runs against.
type env struct {
	sink   string // sink address, allowlisted for both agents
	native *tunnel.Server
	socket string // the native CONNECT frontend
	front  string // the konnectivity-server's CONNECT frontend
	stop   []func()
}

func (e *env) close() {
	for _, f := range slices.Backward(e.stop) {
		f()
	}
}

// path is one way to reach the sink.
type path struct {
	name string
	dial func(ctx context.Context) (net.Conn, error)
}

func run(o options) error {
	e := &env{}
	defer e.close()
	if err := e.setup(); err != nil {
		return err
	}
	fmt.Printf("konnbench  %s  GOMAXPROCS=%d  %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.GOMAXPROCS(0), runtime.Version())
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("load average at start: %s", b)
	}
	paths := []path{
		{"direct TCP", func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", e.sink)
		}},
		{"native DialNode", func(ctx context.Context) (net.Conn, error) { return e.native.DialNode(ctx, node, e.sink) }},
		{"native CONNECT (unix)", func(ctx context.Context) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(e.sink)
			return tunnelwire.Connect(ctx, "unix", e.socket, node+":"+port)
		}},
		{"konnectivity CONNECT (tcp)", func(ctx context.Context) (net.Conn, error) { return tunnelwire.Connect(ctx, "tcp", e.front, e.sink) }},
	}
	res := map[string][]float64{}
	for r := range o.runs {
		fmt.Printf("run %d/%d\n", r+1, o.runs)
		for _, p := range paths {
			mbs, err := bulk(p, o.warm, o.bulk)
			if err != nil {
				return fmt.Errorf("%s bulk: %w", p.name, err)
			}
			lat, err := small(p, o.small)
			if err != nil {
				return fmt.Errorf("%s small: %w", p.name, err)
			}
			res[p.name+"/bulk"] = append(res[p.name+"/bulk"], mbs)
			res[p.name+"/p50"] = append(res[p.name+"/p50"], pct(lat, 50))
			res[p.name+"/p99"] = append(res[p.name+"/p99"], pct(lat, 99))
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("load average at end: %s", b)
	}
	report(paths, res)
	return nil
}

func report(paths []path, res map[string][]float64) {
	base := paths[0].name
	fmt.Printf("\nmedians of %d runs (range in brackets); ratio = path / direct TCP\n\n", len(res[base+"/bulk"]))
	fmt.Printf("| %-26s | %-22s | %-6s | %-20s | %-6s | %-20s | %-6s |\n", "path", "bulk MB/s (1 conn)", "ratio", "small p50 µs", "ratio", "small p99 µs", "ratio")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 28), strings.Repeat("-", 24), strings.Repeat("-", 8), strings.Repeat("-", 22), strings.Repeat("-", 8), strings.Repeat("-", 22), strings.Repeat("-", 8))
	for _, p := range paths {
		cell := func(k string) (string, float64) {
			v := res[p.name+"/"+k]
			m := median(v)
			return fmt.Sprintf("%.0f [%.0f–%.0f]", m, slices.Min(v), slices.Max(v)), m / median(res[base+"/"+k])
		}
		b, br := cell("bulk")
		p50, r50 := cell("p50")
		p99, r99 := cell("p99")
		fmt.Printf("| %-26s | %-22s | %-6s | %-20s | %-6s | %-20s | %-6s |\n", p.name, b, fmt.Sprintf("%.2f", br), p50, fmt.Sprintf("%.1f", r50), p99, fmt.Sprintf("%.1f", r99))
	}
	k, n := paths[len(paths)-1].name, paths[len(paths)-2].name
	ratio := func(key string) float64 { return median(res[k+"/"+key]) / median(res[n+"/"+key]) }
	fmt.Printf("\n%s / %s: bulk %.2f, p50 %.2f, p99 %.2f\n", k, n, ratio("bulk"), ratio("p50"), ratio("p99"))
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	return s[len(s)/2]
}

// pct returns the p-th percentile of lat in microseconds.
func pct(lat []time.Duration, p int) float64 {
	s := slices.Sorted(slices.Values(lat))
	i := min(len(s)*p/100, len(s)-1)
	return float64(s[i]) / float64(time.Microsecond)
}

// bulk downloads from the sink on one connection and returns MB/s.
func bulk(p path, warm, d time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.dial(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(warm + d + 10*time.Second))
	if _, err := c.Write([]byte{'D'}); err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	var n int64
	var t0 time.Time
	for end := time.Now().Add(warm); ; {
		k, err := c.Read(buf)
		if err != nil {
			return 0, err
		}
		now := time.Now()
		if t0.IsZero() {
			if now.After(end) {
				t0, end = now, now.Add(d)
			}
			continue
		}
		n += int64(k)
		if now.After(end) {
			return float64(n) / now.Sub(t0).Seconds() / 1e6, nil
		}
	}
}

// small does n sequential 64-byte round trips on one connection.
func small(p path, n int) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte{'E'}); err != nil {
		return nil, err
	}
	msg, got := make([]byte, 64), make([]byte, 64)
	lat := make([]time.Duration, 0, n)
	for i := range n + n/10 { // the first tenth warms up
		msg[0] = byte(i)
		t := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return nil, err
		}
		if got[0] != msg[0] {
			return nil, errors.New("echo out of order")
		}
		if i >= n/10 {
			lat = append(lat, time.Since(t))
		}
	}
	return lat, nil
}

// startSink serves 'D' (an endless download) and 'E' (echo) connections.
func (e *env) startSink() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e.sink = ln.Addr().String()
	e.stop = append(e.stop, func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				mode := make([]byte, 1)
				if _, err := io.ReadFull(c, mode); err != nil {
					return
				}
				switch mode[0] {
				case 'D':
					buf := make([]byte, 256<<10)
					for {
						if _, err := c.Write(buf); err != nil {
							return
						}
					}
				case 'E':
					io.Copy(c, c)
				}
			}()
		}
	}()
	return nil
}

func (e *env) setup() error {
	ca, err := benchkit.NewCA("konnbench CA")
	if err != nil {
		return err
	}
	serverCert, err := ca.Leaf("localhost", nil, true)
	if err != nil {
		return err
	}
	agentCert, err := ca.Leaf("system:node:"+node, []string{"system:nodes"}, false)
	if err != nil {
		return err
	}
	clientCert := func() (*tls.Certificate, error) { return agentCert, nil }
	roots := func() (*x509.CertPool, error) { return ca.Pool, nil }
	if err := e.startSink(); err != nil {
		return err
	}
	warn := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	// Native: the control plane's tunnel server and the agent's client.
	e.native, err = tunnel.New(tunnel.Config{Certificate: serverCert, ClientCAs: ca.Pool,
		Registerer: prometheus.NewRegistry(), DialTimeout: 10 * time.Second})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "konnbench")
	if err != nil {
		ln.Close()
		return err
	}
	e.stop = append(e.stop, func() { os.RemoveAll(dir) })
	e.socket = filepath.Join(dir, "connect.sock")
	uln, err := tunnel.ListenSocket(e.socket)
	if err != nil {
		ln.Close()
		return err
	}
	e.goStop("native tunnel server", func(ctx context.Context) { e.native.Run(ctx, tunnel.Listeners{TLS: ln, Unix: uln}) })
	nc, err := agenttunnel.New(agenttunnel.Config{Servers: []string{ln.Addr().String()}, ServerName: "localhost", NodeName: node,
		Allow: []string{e.sink}, ClientCertificate: clientCert, Roots: roots, Registerer: prometheus.NewRegistry(), Logger: warn})
	if err != nil {
		return err
	}
	e.goStop("native agent", func(ctx context.Context) { nc.Run(ctx) })

	// Konnectivity: a stock konnectivity-server and the agent's client.
	ps := server.NewProxyServer("server-1", []proxystrategies.ProxyStrategy{proxystrategies.ProxyStrategyDefault},
		1, &server.AgentTokenAuthenticationOptions{}, 10)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*serverCert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool, MinVersion: tls.VersionTLS13})))
	agentproto.RegisterAgentServiceServer(gs, ps)
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go gs.Serve(al)
	e.stop = append(e.stop, gs.Stop)
	hs := &http.Server{Handler: &server.Tunnel{Server: ps}, ReadHeaderTimeout: 10 * time.Second}
	fl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go hs.Serve(fl)
	e.stop = append(e.stop, func() { hs.Close() })
	e.front = fl.Addr().String()
	kc, err := konnectivity.New(konnectivity.Config{Server: al.Addr().String(), ServerName: "localhost", NodeName: node,
		Allow: []string{e.sink}, ClientCertificate: clientCert, Roots: roots, Registerer: prometheus.NewRegistry(), Logger: warn})
	if err != nil {
		return err
	}
	e.goStop("konnectivity agent", func(ctx context.Context) { kc.Run(ctx) })

	if err := waitFor(5*time.Second, func() bool { return e.native.Conns(node) > 0 }); err != nil {
		return fmt.Errorf("native agent did not connect: %w", err)
	}
	if err := waitFor(5*time.Second, func() bool { ok, _ := ps.Readiness.Ready(); return ok && kc.Connected() == 1 }); err != nil {
		return fmt.Errorf("konnectivity agent did not connect: %w", err)
	}
	return nil
}

// goStop runs f until the bench ends, and waits up to 10 s for it then.
func (e *env) goStop(name string, f func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(ctx)
	}()
	e.stop = append(e.stop, func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			fmt.Fprintf(os.Stderr, "konnbench: %s did not stop within 10s\n", name)
		}
	})
}

func waitFor(d time.Duration, cond func() bool) error {
	for end := time.Now().Add(d); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(end) {
			return fmt.Errorf("not within %v", d)
		}
	}
	return nil
}
