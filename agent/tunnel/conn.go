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
	tls   *tls.Conn
	batch *batchConn // under tls
	leaf  []byte     // the client certificate it was opened with (DER)
	base  *http.Server
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
	bc := &batchConn{Conn: raw}
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
	t.batch = bc
	return t, nil
}

// batchConn sits under TLS. crypto/tls writes every record (at most 16 KiB)
// with its own write call; while a large write is in progress (see
// batchWriter) batchConn gathers the records and writes them in chunks of
// batchLen, which on a bulk stream saves most of the system calls. Small
// writes, handshakes and alerts go straight through.
//
// Reads are gathered too: crypto/tls asks for about one record per read,
// so once a read fills the caller's buffer (more is probably waiting),
// batchConn reads up to batchLen at once into a pooled buffer and serves
// the next reads from it. It goes back to direct reads as soon as a read
// brings no more than was asked for, so an idle connection holds no
// buffer (at most one, until its next frame or keepalive ping).
type batchConn struct {
	net.Conn
	mu  sync.Mutex // guards buf
	buf *[]byte    // non-nil while batching

	// Read state; crypto/tls reads from one goroutine at a time.
	rbuf      *[]byte // pooled, holds rbuf[rpos:] unread; nil when empty
	rpos      int
	streaming bool // the last read filled its buffer
}

func (c *batchConn) Read(p []byte) (int, error) {
	if c.rbuf != nil {
		b := *c.rbuf
		n := copy(p, b[c.rpos:])
		if c.rpos += n; c.rpos == len(b) {
			batchPool.Put(c.rbuf)
			c.rbuf = nil
		}
		return n, nil
	}
	if !c.streaming || len(p) >= batchLen {
		n, err := c.Conn.Read(p)
		c.streaming = n == len(p) && n >= streamingMin
		return n, err
	}
	bp := batchPool.Get().(*[]byte)
	b := (*bp)[:batchLen]
	n, err := c.Conn.Read(b)
	c.streaming = n > len(p)
	if n <= len(p) {
		batchPool.Put(bp)
		return copy(p, b[:n]), err
	}
	// Keep the rest; an error comes back from the next read of the conn.
	*bp = b[:n]
	c.rbuf, c.rpos = bp, copy(p, b)
	return c.rpos, nil
}

// streamingMin is the smallest filled read after which batchConn reads
// ahead: the handshake and the HTTP/2 preface fill small reads too.
const streamingMin = 4 << 10

// batchLen is the most batchConn gathers before it writes.
const batchLen = 256 << 10

var batchPool = sync.Pool{New: func() any {
	b := make([]byte, 0, batchLen)
	return &b
}}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf == nil {
		return c.Conn.Write(p)
	}
	n := len(p)
	for len(p) > 0 {
		b := *c.buf
		if len(b) == cap(b) {
			if err := c.flushLocked(); err != nil {
				return n - len(p), err
			}
			continue
		}
		k := min(len(p), cap(b)-len(b))
		*c.buf = append(b, p[:k]...)
		p = p[k:]
	}
	return n, nil
}

func (c *batchConn) flushLocked() error {
	b := *c.buf
	*c.buf = b[:0]
	if len(b) == 0 {
		return nil
	}
	_, err := c.Conn.Write(b)
	return err
}

// start begins gathering writes; end writes what was gathered and stops.
func (c *batchConn) start() {
	c.mu.Lock()
	c.buf = batchPool.Get().(*[]byte)
	*c.buf = (*c.buf)[:0]
	c.mu.Unlock()
}

func (c *batchConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	batchPool.Put(c.buf)
	c.buf = nil
	return err
}

// batchWriter is the tunnel connection as HTTP/2 sees it: writes of more
// than a few TLS records are gathered by the batchConn under TLS.
type batchWriter struct {
	*tls.Conn
	batch *batchConn
}

// batchMin is the smallest write that is gathered: below it, there are too
// few records to gain anything.
const batchMin = 64 << 10

func (w *batchWriter) Write(p []byte) (int, error) {
	if len(p) < batchMin {
		return w.Conn.Write(p)
	}
	w.batch.start()
	n, err := w.Conn.Write(p)
	if ferr := w.batch.end(); err == nil && ferr != nil {
		err = ferr
	}
	return n, err
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
		h2.ServeConn(&batchWriter{Conn: t.tls, batch: t.batch}, &http2.ServeConnOpts{
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
