package tunnelwire

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Connect opens a connection to target ("<node>:<port>" or "ip:port")
// through the tunnel server's HTTP CONNECT frontend at network/addr (the
// UNIX socket, or TCP for a caller that wraps TLS itself) and returns it
// once the frontend answered 200. ctx bounds the dial and the answer.
func Connect(ctx context.Context, network, addr, target string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return ConnectOver(ctx, c, target)
}

// ConnectOver sends CONNECT target on the open connection c; on error c is
// closed.
func ConnectOver(ctx context.Context, c net.Conn, target string) (net.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %w", target, err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %w", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: HTTP %d: %s", target, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	c.SetDeadline(time.Time{})
	if br.Buffered() == 0 {
		return c, nil
	}
	return &bufferedConn{Conn: c, r: br}, nil
}

// bufferedConn returns the bytes read past the CONNECT answer first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
