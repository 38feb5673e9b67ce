package konnectivity

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

// TestCertRotationDrains: the client certificate changes mid-download.
// The agent opens a new stream with it and drains the old one; the
// download finishes intact and later connections use the new stream.
func TestCertRotationDrains(t *testing.T) {
	p := newPKI(t)
	srv := startStockServer(t, p)
	kubelet, bigBody := fakeKubelet(t)
	ku, _ := url.Parse(kubelet.URL)
	var cur atomic.Pointer[tls.Certificate]
	c1 := p.issue(t, "system:node:node1", []string{"system:nodes"}, false)
	cur.Store(&c1)
	cfg := agentConfig(p, srv.agentAddr, []string{ku.Host}, func() (*tls.Certificate, error) { return cur.Load(), nil })
	cfg.CertPollInterval = 20 * time.Millisecond
	c := runAgent(t, cfg)
	waitFor(t, "agent registered", func() bool { return ready(srv) && c.Connected() == 1 })

	conn, br, status := connect(t, srv.frontAddr, ku.Host)
	defer conn.Close()
	if status != 200 {
		t.Fatalf("CONNECT: status %d", status)
	}
	fmt.Fprintf(conn, "GET /huge HTTP/1.1\r\nHost: kubelet\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}

	c2 := p.issue(t, "system:node:node1", []string{"system:nodes"}, false)
	cur.Store(&c2)
	waitFor(t, "a second stream with the new certificate", func() bool {
		s, _ := srv.lastPeer.Load().(*big.Int)
		return c.Connected() == 2 && s != nil && s.Cmp(c2.Leaf.SerialNumber) == 0
	})
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("download after rotation: %v", err)
	}
	want := sha256.New()
	for range 16 {
		want.Write(bigBody)
	}
	if !bytes.Equal(h.Sum(nil), want.Sum(nil)) || n+1<<20 != 16*int64(len(bigBody)) {
		t.Fatalf("download after rotation: %d bytes, checksum differs", n+1<<20)
	}
	conn.Close()

	waitFor(t, "the old stream to drain and close", func() bool { return c.Connected() == 1 })
	peers := srv.peers.Load()
	hello(t, srv.frontAddr, ku.Host)
	if srv.peers.Load() != peers {
		t.Fatal("a new handshake happened; the request did not use the existing new stream")
	}
}
