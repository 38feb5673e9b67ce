package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// ErrNoTunnel is returned (wrapped) by DialNode when the node has no
// usable tunnel connection.
var ErrNoTunnel = errors.New("no tunnel from node")

// ErrNotSupported is returned by a stream's deadline methods.
var ErrNotSupported = errors.New("not supported on tunnel streams")

// RefusedError is returned by DialNode when the agent answered the
// CONNECT with something other than 200.
type RefusedError struct {
	Node       string
	StatusCode int
	Reason     string // a tunnelwire.Refused* value, or "" from an old agent
	Message    string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("agent on node %s refused the connection (%d %s): %s", e.Node, e.StatusCode, e.Reason, e.Message)
}

// DialNode opens a TCP connection to address (host:port, sent to the agent
// as the CONNECT :authority) through node's newest tunnel. The agent
// dials only destinations in its allowlist. ctx bounds the dial, together
// with Config.DialTimeout; it does not bound the connection.
func (s *Server) DialNode(ctx context.Context, node, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	var last error
	for _, a := range s.candidates(node) {
		if !a.cc.CanTakeNewRequest() {
			continue
		}
		c, err := s.openStream(ctx, a, address)
		if err == nil {
			return c, nil
		}
		var refused *RefusedError
		if errors.As(err, &refused) || ctx.Err() != nil {
			return nil, err
		}
		last = err // the connection went away under us; try an older one
	}
	if last != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrNoTunnel, node, last)
	}
	return nil, fmt.Errorf("%w %s", ErrNoTunnel, node)
}

// openStream opens one CONNECT stream on a. The stream lives until the
// returned conn is closed; ctx only bounds the wait for the answer.
func (s *Server) openStream(ctx context.Context, a *agentConn, address string) (net.Conn, error) {
	sctx, scancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, scancel)
	pr, pw := io.Pipe()
	req := (&http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Host: address},
		Host:   address,
		Header: http.Header{},
		Body:   pr,
	}).WithContext(sctx)
	resp, err := a.cc.RoundTrip(req)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		scancel()
		pw.Close()
		if resp != nil {
			resp.Body.Close()
		}
		return nil, fmt.Errorf("open stream to %s on node %s: %w", address, a.node, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		scancel()
		pw.Close()
		return nil, &RefusedError{Node: a.node, StatusCode: resp.StatusCode,
			Reason: resp.Header.Get(tunnelwire.HeaderRefusal), Message: strings.TrimSpace(string(msg))}
	}
	s.m.streams.Inc()
	return &streamConn{body: resp.Body, pw: pw, cancel: scancel, node: a.node, address: address, m: s.m}, nil
}

// streamConn is a CONNECT stream as a net.Conn: reads come from the
// response body, writes go to the request body.
type streamConn struct {
	body    io.ReadCloser
	pw      *io.PipeWriter
	cancel  context.CancelFunc
	node    string
	address string
	m       *metrics
	once    sync.Once
}

func (c *streamConn) Read(p []byte) (int, error)  { return c.body.Read(p) }
func (c *streamConn) Write(p []byte) (int, error) { return c.pw.Write(p) }

// CloseWrite ends the request body (END_STREAM): the agent half-closes
// its connection to the destination.
func (c *streamConn) CloseWrite() error { return c.pw.Close() }

// Close resets the stream if it is still open.
func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.pw.CloseWithError(net.ErrClosed)
		c.body.Close()
		c.cancel()
		c.m.streams.Dec()
	})
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return tunnelAddr("control-plane") }
func (c *streamConn) RemoteAddr() net.Addr { return tunnelAddr(c.node + "/" + c.address) }

func (c *streamConn) SetDeadline(time.Time) error      { return ErrNotSupported }
func (c *streamConn) SetReadDeadline(time.Time) error  { return ErrNotSupported }
func (c *streamConn) SetWriteDeadline(time.Time) error { return ErrNotSupported }

// tunnelAddr names one end of a tunnel stream.
type tunnelAddr string

func (a tunnelAddr) Network() string { return "nodetrust-tunnel" }
func (a tunnelAddr) String() string  { return string(a) }
