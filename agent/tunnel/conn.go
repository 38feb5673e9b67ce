package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// Reasons a tunnel dial fails, the label of the dial failure metric.
const (
	failNoCert  = "no_certificate"
	failRoots   = "roots"
	failConnect = "connect"
	failTLS     = "tls"
	failALPN    = "alpn"
	failRefused = "refused" // the server closed the connection after the handshake
)

// dialError carries the metric reason of a failed tunnel dial.
type dialError struct {
	reason string
	err    error
}

func (e *dialError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// tunnelConn is one TLS connection to a server on which the agent serves
// HTTP/2.
type tunnelConn struct {
	tls  *tls.Conn
	leaf []byte // the client certificate it was opened with (DER)
	// serverID and serverCount come from the server's hello: which replica
	// this is, and how many serve behind the address.
	serverID    string
	serverCount int
	base        *http.Server
	// registered is closed once the HTTP/2 server tracks the connection,
	// from when a graceful shutdown reaches it.
	registered chan struct{}
	done       chan struct{} // closed when serving has ended and the conn is closed
}

// dial opens a tunnel to addr and starts serving it. It returns once the
// server has accepted the agent, which with TLS 1.3 is only known when the
// server's HTTP/2 preface arrives.
func (c *Client) dial(ctx context.Context, addr string) (*tunnelConn, error) {
	t, err := c.dialTLS(ctx, addr)
	if err != nil {
		var de *dialError
		if errors.As(err, &de) {
			c.m.dialFailures.WithLabelValues(de.reason).Inc()
		}
		return nil, err
	}
	c.serve(t)
	return t, nil
}

func (c *Client) dialTLS(ctx context.Context, addr string) (*tunnelConn, error) {
	roots, err := c.cfg.Roots()
	if err != nil {
		return nil, &dialError{failRoots, fmt.Errorf("cluster CA: %w", err)}
	}
	if _, err := c.cfg.ClientCertificate(); err != nil {
		return nil, &dialError{failNoCert, err}
	}
	host, _, _ := net.SplitHostPort(addr)
	if c.cfg.ServerName != "" {
		host = c.cfg.ServerName
	}
	t := &tunnelConn{done: make(chan struct{}), registered: make(chan struct{})}
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: host,
		RootCAs:    roots,
		NextProtos: []string{tunnelwire.ALPN},
		Time:       c.clock.Now,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := c.cfg.ClientCertificate()
			if err != nil {
				return nil, err
			}
			if len(cert.Certificate) > 0 {
				t.leaf = cert.Certificate[0]
			}
			return cert, nil
		},
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &dialError{failConnect, err}
	}
	bc := tunnelwire.NewBatchConn(raw)
	conn := tls.Client(bc, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, &dialError{failTLS, err}
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != tunnelwire.ALPN {
		conn.Close()
		return nil, &dialError{failALPN, fmt.Errorf("server negotiated ALPN %q, not %q", p, tunnelwire.ALPN)}
	}
	// The server speaks first (it is the HTTP/2 client). A refused client
	// certificate surfaces here as a TLS alert.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	t.serverID, t.serverCount, err = readHello(conn)
	if err != nil {
		stop()
		conn.Close()
		return nil, &dialError{failRefused, err}
	}
	pre := make([]byte, len(http2.ClientPreface))
	_, err = io.ReadFull(conn, pre)
	stop()
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, &dialError{failRefused, err}
	}
	if !bytes.Equal(pre, []byte(http2.ClientPreface)) {
		conn.Close()
		return nil, &dialError{failRefused, errors.New("server did not send the HTTP/2 preface")}
	}
	t.tls = conn
	return t, nil
}

// readHello reads the server's hello line byte by byte, so nothing of the
// HTTP/2 preface behind it is consumed.
func readHello(r io.Reader) (string, int, error) {
	var line []byte
	var b [1]byte
	for len(line) < tunnelwire.MaxHelloLen {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", 0, err
		}
		line = append(line, b[0])
		if b[0] == '\n' {
			return tunnelwire.ParseHello(string(line))
		}
	}
	return "", 0, errors.New("tunnel hello: too long")
}

// serve serves HTTP/2 on t in a goroutine that closes t.done at the end.
func (c *Client) serve(t *tunnelConn) {
	h2 := &http2.Server{
		MaxConcurrentStreams:         tunnelwire.MaxStreams,
		MaxReadFrameSize:             tunnelwire.MaxFrameSize,
		MaxUploadBufferPerConnection: tunnelwire.ConnWindow,
		MaxUploadBufferPerStream:     tunnelwire.StreamWindow,
		ReadIdleTimeout:              c.cfg.KeepAlive,
		PingTimeout:                  c.cfg.PingTimeout,
	}
	var once sync.Once
	t.base = &http.Server{
		ErrorLog:  log.New(io.Discard, "", 0),
		ConnState: func(net.Conn, http.ConnState) { once.Do(func() { close(t.registered) }) },
	}
	if err := http2.ConfigureServer(t.base, h2); err != nil {
		panic(err) // only fails for TLS cipher settings, which are not set
	}
	c.connected.Add(1)
	c.m.connected.Inc()
	c.handlers.Add(1)
	go func() {
		defer c.handlers.Done()
		defer close(t.done)
		h2.ServeConn(tunnelwire.NewBatchWriter(t.tls), &http2.ServeConnOpts{
			BaseConfig:       t.base,
			Handler:          http.HandlerFunc(c.serveStream),
			SawClientPreface: true,
		})
		t.tls.Close()
		c.connected.Add(-1)
		c.m.connected.Dec()
	}()
}

// drain stops t from taking new streams (HTTP/2 GOAWAY) and waits for its
// open streams, up to timeout, or up to stopTimeout once ctx is done; then
// it closes t. It returns when serving has ended.
func (t *tunnelConn) drain(ctx context.Context, timeout, stopTimeout time.Duration, clk clock.Clock) {
	tm := clk.NewTimer(timeout)
	defer tm.Stop()
	stopping := ctx.Done()
	shut := t.registered
	for {
		select {
		case <-shut:
			t.base.Shutdown(context.Background()) // the HTTP/2 graceful shutdown of t
			shut = nil
		case <-stopping:
			tm.Reset(stopTimeout)
			stopping = nil
		case <-t.done:
			return
		case <-tm.C():
			t.tls.Close()
			<-t.done
			return
		}
	}
}
