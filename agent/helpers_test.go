package agent_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func readKey(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	i := strings.Index(string(b), "-----BEGIN PRIVATE KEY")
	require.GreaterOrEqual(t, i, 0)
	return string(b[i:])
}

func newKeyPEM(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(k)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// overwrite replaces a file's content in place (not atomically: it
// simulates corruption).
func overwrite(t *testing.T, path string, b []byte) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, b, 0o600))
}

// lateProxy forwards TCP to a target from a fixed source address, once
// started: until then its address refuses connections.
type lateProxy struct {
	t      *testing.T
	addr   string
	target string
	src    string
	mu     sync.Mutex
	ln     net.Listener
}

func newLateProxy(t *testing.T, target, src string) *lateProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	p := &lateProxy{t: t, addr: addr, target: target, src: src}
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.ln != nil {
			p.ln.Close()
		}
	})
	return p
}

func (p *lateProxy) start() {
	ln, err := net.Listen("tcp", p.addr)
	require.NoError(p.t, err)
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(p.src)}}
				up, err := d.Dial("tcp", p.target)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
}
