package tunnelwire

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// frontend answers one CONNECT with status and then writes extra at once,
// in the same write as the answer.
func frontend(t *testing.T, status int, extra string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil || req.Method != http.MethodConnect || req.Host != "node-1:10250" {
			return
		}
		if status == http.StatusOK {
			io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n"+extra)
		} else {
			io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 11\r\n\r\nnot allowed")
		}
		time.Sleep(100 * time.Millisecond)
	}()
	return sock
}

func TestConnect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	c, err := Connect(ctx, "unix", frontend(t, http.StatusOK, "hello"), "node-1:10250")
	require.NoError(t, err)
	b := make([]byte, 5)
	_, err = io.ReadFull(c, b)
	require.NoError(t, err)
	require.Equal(t, "hello", string(b), "bytes sent with the answer are not lost")
	c.Close()

	_, err = Connect(ctx, "unix", frontend(t, http.StatusForbidden, ""), "node-1:10250")
	require.ErrorContains(t, err, "CONNECT node-1:10250: HTTP 403: not allowed")
}
