package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// kubeletMux stands in for a kubelet: /healthz answers who it is, /logs
// streams 32 KiB chunks until the caller goes away (like kubectl logs -f).
func kubeletMux(node string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok: kubelet of %s, reached from %s", node, r.RemoteAddr)
	})
	chunk := []byte(strings.Repeat("log line from "+node+" ............................................\n", 512))[:32<<10]
	mux.HandleFunc("/logs", func(w http.ResponseWriter, r *http.Request) {
		f, _ := w.(http.Flusher)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			if f != nil {
				f.Flush()
			}
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
		}
	})
	return mux
}

// tunnelClient is the control plane's side: an HTTP client whose every
// connection is an HTTP CONNECT to <node>:<port> on the tunnel server's
// UNIX-socket frontend, so requests travel through the node's tunnel.
func tunnelClient(socket string) *http.Client {
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		return tunnelwire.Connect(ctx, "unix", socket, addr)
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}, Timeout: 10 * time.Second}
}

// tunnelGet fetches http://<node>:<port><path> through the tunnel.
func tunnelGet(ctx context.Context, c *http.Client, n *demoNode, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.name+":"+strconv.Itoa(n.kubeletPort())+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", resp.Status, b)
	}
	return string(b), err
}

// traffic is the control plane's background load through the tunnels: one
// long log stream from the last node and small requests to every node.
type traffic struct {
	bytes    atomic.Int64
	ok, fail atomic.Int64
	streamOK atomic.Bool
	lastErr  atomic.Value // string
}

// run keeps the traffic going until ctx is done.
func (tr *traffic) run(ctx context.Context, socket string, nodes []*demoNode) {
	stream := &http.Client{Transport: tunnelClient(socket).Transport} // no timeout: it streams
	small := tunnelClient(socket)
	done := make(chan struct{})
	go func() {
		defer close(done)
		n := nodes[len(nodes)-1]
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.name+":"+strconv.Itoa(n.kubeletPort())+"/logs", nil)
		resp, err := stream.Do(req)
		if err != nil {
			tr.lastErr.Store("log stream: " + err.Error())
			return
		}
		defer resp.Body.Close()
		tr.streamOK.Store(true)
		buf := make([]byte, 64<<10)
		for {
			k, err := resp.Body.Read(buf)
			tr.bytes.Add(int64(k))
			if err != nil {
				if ctx.Err() == nil {
					tr.streamOK.Store(false)
					tr.lastErr.Store("log stream: " + err.Error())
				}
				return
			}
		}
	}()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			<-done
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := tunnelGet(rctx, small, nodes[i%len(nodes)], "/healthz")
		cancel()
		switch {
		case err == nil:
			tr.ok.Add(1)
		case ctx.Err() == nil:
			tr.fail.Add(1)
			tr.lastErr.Store(err.Error())
		}
	}
}

func (tr *traffic) summary() string {
	s := fmt.Sprintf("%.1f MB streamed from the log stream, %d small requests ok, %d failed", float64(tr.bytes.Load())/1e6, tr.ok.Load(), tr.fail.Load())
	if e, _ := tr.lastErr.Load().(string); e != "" {
		s += " (last error: " + e + ")"
	}
	return s
}
