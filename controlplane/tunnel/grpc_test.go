package tunnel_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	konnclient "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	konnectivity "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/nodetrust/nodetrust/controlplane/tunnel"
)

// serveKonnectivity runs the gRPC frontend of s on a new UNIX socket (and,
// with tlsToo, on a TCP port with mTLS) until the end of the test. It
// returns the socket path and the TCP address.
func serveKonnectivity(t *testing.T, s *cpServer, tlsToo bool) (socket, addr string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ntk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket = filepath.Join(dir, "konnectivity.sock")
	uln, err := tunnel.ListenSocket(socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.srv.ServeKonnectivity(ctx, uln, false); err != nil {
			t.Errorf("ServeKonnectivity (socket): %v", err)
		}
	})
	if tlsToo {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		wg.Go(func() {
			if err := s.srv.ServeKonnectivity(ctx, ln, true); err != nil {
				t.Errorf("ServeKonnectivity (TLS): %v", err)
			}
		})
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return socket, addr
}

// udsDial is how kube-apiserver reaches a Konnectivity UNIX socket.
func udsDial(socket string) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}),
	}
}

// konnGet dials target through a new single-use Konnectivity tunnel, as
// kube-apiserver does for each connection, and GETs path.
func konnGet(ctx context.Context, target, path string, opts []grpc.DialOption) (string, error) {
	tun, err := konnclient.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), "passthrough:///konnectivity", opts...)
	if err != nil {
		return "", fmt.Errorf("create tunnel: %w", err)
	}
	c, err := tun.DialContext(ctx, "tcp", target)
	if err != nil {
		<-tun.Done()
		return "", fmt.Errorf("dial %s: %w", target, err)
	}
	defer func() {
		c.Close()
		<-tun.Done()
	}()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	return resp.Status + " " + string(b), nil
}

func TestKonnectivityClient(t *testing.T) {
	checkGRPCLeaks(t)
	checkLeaks(t)
	ca, srv, _, port := setup(t)
	socket, addr := serveKonnectivity(t, srv, true)
	uds := udsDial(socket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const want = "200 OK hello from kubelet\n"

	t.Run("by name over the socket", func(t *testing.T) {
		got, err := konnGet(ctx, "node-1:"+port, "/hello", uds)
		if err != nil || got != want {
			t.Fatalf("GET /hello = %q, %v; want %q", got, err, want)
		}
	})
	t.Run("by IP over the socket", func(t *testing.T) {
		// The agent's tunnel comes from 127.0.0.1, and no other node's.
		got, err := konnGet(ctx, "127.0.0.1:"+port, "/hello", uds)
		if err != nil || got != want {
			t.Fatalf("GET /hello = %q, %v; want %q", got, err, want)
		}
	})
	t.Run("mTLS", func(t *testing.T) {
		creds := credentials.NewTLS(&tls.Config{RootCAs: ca.pool, ServerName: "localhost",
			Certificates: []tls.Certificate{*ca.leaf(t, "system:konnectivity-server", nil, false)}})
		opts := []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		})}
		got, err := konnGet(ctx, "node-1:"+port, "/hello", opts)
		if err != nil || got != want {
			t.Fatalf("GET /hello = %q, %v; want %q", got, err, want)
		}
	})
	t.Run("mTLS with a node certificate", func(t *testing.T) {
		creds := credentials.NewTLS(&tls.Config{RootCAs: ca.pool, ServerName: "localhost",
			Certificates: []tls.Certificate{*ca.node(t, "node-2")}})
		opts := []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		})}
		if got, err := konnGet(ctx, "node-1:"+port, "/hello", opts); err == nil {
			t.Fatalf("GET /hello as a node = %q, want an error", got)
		}
	})

	before := metric(t, srv.reg, "nodetrust_tunnel_dial_failures_total", "no_tunnel")
	for _, tc := range []struct {
		name, target, text string
	}{
		{"disallowed port", "node-1:22", "not in this node's tunnel allowlist"},
		{"unknown node", "node-9:" + port, "no tunnel from node node-9"},
		{"unknown IP", "10.1.2.3:10250", "no node owns the IP"},
		{"bad target", "node_1:80", "not <node-name>:<port>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := konnGet(ctx, tc.target, "/hello", uds)
			if err == nil || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("dial %s = %q, %v; want an error with %q", tc.target, got, err, tc.text)
			}
		})
	}
	if got := metric(t, srv.reg, "nodetrust_tunnel_dial_failures_total", "no_tunnel"); got != before+2 {
		t.Errorf("no_tunnel dial failures = %v, want %v", got, before+2)
	}
	if got := metric(t, srv.reg, "nodetrust_tunnel_dial_failures_total", "agent_refused"); got != 1 {
		t.Errorf("agent_refused dial failures = %v, want 1", got)
	}
	if got := metric(t, srv.reg, "nodetrust_tunnel_dial_failures_total", "forbidden"); got != 1 {
		t.Errorf("forbidden dial failures = %v, want 1", got)
	}
	if got := metric(t, srv.reg, "nodetrust_tunnel_bytes_total", "from_agent"); got < 3*float64(len(want)) {
		t.Errorf("bytes from agents = %v", got)
	}
}

func TestKonnectivityConcurrentDials(t *testing.T) {
	checkGRPCLeaks(t)
	checkLeaks(t)
	_, srv, _, port := setup(t)
	socket, _ := serveKonnectivity(t, srv, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 64
	errs := make(chan error, 2*n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got, err := konnGet(ctx, "node-1:"+port, fmt.Sprintf("/bytes?n=%d", 1000+i), udsDial(socket))
			if err == nil && len(got) != len("200 OK ")+1000+i {
				err = fmt.Errorf("dial %d: got %d bytes", i, len(got))
			}
			errs <- err
		})
	}
	// The reusable tunnel: one gRPC connection, one stream per dial.
	rt, err := konnclient.CreateGRPCTunnel(ctx, "passthrough:///konnectivity", udsDial(socket)...)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		wg.Go(func() {
			c, err := rt.DialContext(ctx, "tcp", "node-1:"+port)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /hello HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
			b, err := io.ReadAll(c)
			if err == nil && !strings.HasSuffix(string(b), "hello from kubelet\n") {
				err = fmt.Errorf("reusable tunnel: got %q", b)
			}
			errs <- err
		})
	}
	wg.Wait()
	rt.Close()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	waitMetric(t, srv, "nodetrust_tunnel_streams_open", 0)
}

// TestKonnectivityCancelledDial cancels dials before their DIAL_RSP: the
// client sends DIAL_CLS and goes away; nothing may stay open.
func TestKonnectivityCancelledDial(t *testing.T) {
	checkGRPCLeaks(t)
	checkLeaks(t)
	_, srv, _, port := setup(t)
	socket, _ := serveKonnectivity(t, srv, false)
	for range 10 {
		tun, err := konnclient.CreateSingleUseGrpcTunnelWithContext(context.Background(), context.Background(), "passthrough:///k", udsDial(socket)...)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if c, err := tun.DialContext(ctx, "tcp", "node-1:"+port); err == nil {
			c.Close()
		}
		<-tun.Done()
	}
	waitMetric(t, srv, "nodetrust_tunnel_streams_open", 0)
}

// TestKonnectivityProtocol drives the ProxyService with raw packets: two
// connections on one stream, DATA, CLOSE_REQ/CLOSE_RSP, and a DATA for an
// unknown connectID.
func TestKonnectivityProtocol(t *testing.T) {
	checkGRPCLeaks(t)
	checkLeaks(t)
	_, srv, _, port := setup(t)
	socket, _ := serveKonnectivity(t, srv, false)
	cc, err := grpc.NewClient("passthrough:///k", udsDial(socket)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := konnectivity.NewProxyServiceClient(cc).Proxy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(p *konnectivity.Packet) {
		t.Helper()
		if err := stream.Send(p); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(want konnectivity.PacketType) *konnectivity.Packet {
		t.Helper()
		p, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if p.GetType() != want {
			t.Fatalf("got packet %v, want %v", p, want)
		}
		return p
	}
	ids := map[int64]bool{}
	for _, random := range []int64{11, 12} {
		send(&konnectivity.Packet{Type: konnectivity.PacketType_DIAL_REQ, Payload: &konnectivity.Packet_DialRequest{
			DialRequest: &konnectivity.DialRequest{Protocol: "tcp", Address: "node-1:" + port, Random: random}}})
		rsp := recv(konnectivity.PacketType_DIAL_RSP).GetDialResponse()
		if rsp.GetRandom() != random || rsp.GetError() != "" || rsp.GetConnectID() == 0 || ids[rsp.GetConnectID()] {
			t.Fatalf("DIAL_RSP = %v", rsp)
		}
		ids[rsp.GetConnectID()] = true
	}
	var first, second int64
	for id := range ids {
		if first == 0 || id < first {
			second, first = first, id
		} else {
			second = id
		}
	}
	// Close the first with CLOSE_REQ; use the second.
	send(&konnectivity.Packet{Type: konnectivity.PacketType_CLOSE_REQ, Payload: &konnectivity.Packet_CloseRequest{
		CloseRequest: &konnectivity.CloseRequest{ConnectID: first}}})
	if rsp := recv(konnectivity.PacketType_CLOSE_RSP).GetCloseResponse(); rsp.GetConnectID() != first || rsp.GetError() != "" {
		t.Fatalf("CLOSE_RSP = %v", rsp)
	}
	send(&konnectivity.Packet{Type: konnectivity.PacketType_DATA, Payload: &konnectivity.Packet_Data{
		Data: &konnectivity.Data{ConnectID: first, Data: []byte("x")}}})
	if rsp := recv(konnectivity.PacketType_CLOSE_RSP).GetCloseResponse(); rsp.GetConnectID() != first || rsp.GetError() == "" {
		t.Fatalf("CLOSE_RSP for an unknown connectID = %v", rsp)
	}
	send(&konnectivity.Packet{Type: konnectivity.PacketType_DATA, Payload: &konnectivity.Packet_Data{
		Data: &konnectivity.Data{ConnectID: second, Data: []byte("GET /hello HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")}}})
	var got []byte
	for {
		p, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if p.GetType() == konnectivity.PacketType_CLOSE_RSP {
			if p.GetCloseResponse().GetConnectID() != second {
				t.Fatalf("CLOSE_RSP = %v", p)
			}
			break
		}
		if p.GetType() != konnectivity.PacketType_DATA || p.GetData().GetConnectID() != second {
			t.Fatalf("got %v, want DATA for %d", p, second)
		}
		got = append(got, p.GetData().GetData()...)
	}
	if !strings.HasSuffix(string(got), "hello from kubelet\n") {
		t.Fatalf("response = %q", got)
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("after CloseSend: Recv = %v, want EOF", err)
	}
	waitMetric(t, srv, "nodetrust_tunnel_streams_open", 0)
}

// waitMetric waits until the unlabelled metric name of s has the value.
func waitMetric(t *testing.T, s *cpServer, name string, want float64) {
	t.Helper()
	var got float64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = metric(t, s.reg, name, ""); got == want {
			return
		}
	}
	t.Errorf("%s = %v, want %v", name, got, want)
}

// checkGRPCLeaks fails the test if gRPC or Konnectivity client goroutines
// outlive it. Register it first so that it runs after the other cleanups.
func checkGRPCLeaks(t *testing.T) {
	t.Cleanup(func() {
		var stacks string
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			buf := make([]byte, 1<<20)
			stacks = ""
			for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
				if (strings.Contains(g, "google.golang.org/grpc") || strings.Contains(g, "konnectivity-client")) &&
					!strings.Contains(g, "checkGRPCLeaks") {
					stacks += g + "\n\n"
				}
			}
			if stacks == "" {
				return
			}
		}
		t.Errorf("gRPC goroutines leaked:\n%s", stacks)
	})
}
