package signer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	certv1 "k8s.io/api/certificates/v1"
)

// DefaultTimeout bounds a Sign call whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// clientConns is how many connections a Client spreads its calls over.
const clientConns = 4

// Client calls a signer over its UNIX socket. The API process holds only
// this, never the CA key. It keeps a few connections open and sends many
// requests on each at once.
type Client struct {
	socket string
	next   atomic.Uint64          // request ids, and which connection to use
	pin    atomic.Pointer[string] // the CA to sign with; nil or "" for the signer's newest

	mu     sync.Mutex
	conns  [clientConns]*clientConn // guarded by mu; nil or broken ones are dialled again
	closed bool                     // guarded by mu
}

// NewClient returns a client for the signer listening at socket.
func NewClient(socket string) *Client {
	return &Client{socket: socket}
}

// answer is what a call waits for.
type answer struct {
	code byte
	body []byte
	err  error // the connection broke
}

// clientConn is one connection and its calls waiting for an answer.
type clientConn struct {
	c net.Conn

	wmu sync.Mutex // serializes writes
	w   *bufio.Writer

	mu      sync.Mutex
	pending map[uint64]chan answer // guarded by mu
	err     error                  // guarded by mu; set once the connection broke
}

// SetCA makes later Sign calls ask for the CA with pin ("" for the
// signer's newest).
func (c *Client) SetCA(pin string) { c.pin.Store(&pin) }

func (c *Client) caPin() string {
	if p := c.pin.Load(); p != nil {
		return *p
	}
	return ""
}

// Sign asks the signer to sign csr with the CA set by SetCA and returns
// the certificate PEM. A refusal on the request's merits wraps
// ErrRejected.
func (c *Client) Sign(ctx context.Context, csr *certv1.CertificateSigningRequest) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	id := c.next.Add(1)
	cc, err := c.conn(ctx, int(id%clientConns))
	if err != nil {
		return nil, fmt.Errorf("call signer at %s: %w", c.socket, err)
	}
	ch := make(chan answer, 1)
	if err := cc.send(id, c.caPin(), csr, ch); err != nil {
		c.drop(cc)
		return nil, fmt.Errorf("call signer at %s: %w", c.socket, err)
	}
	select {
	case a := <-ch:
		switch {
		case a.err != nil:
			c.drop(cc)
			return nil, fmt.Errorf("call signer at %s: %w", c.socket, a.err)
		case a.code == codeSigned:
			return a.body, nil
		case a.code == codeRejected:
			return nil, fmt.Errorf("%w: %s", ErrRejected, a.body)
		default:
			return nil, fmt.Errorf("signer at %s: %s", c.socket, a.body)
		}
	case <-ctx.Done():
		cc.forget(id)
		return nil, fmt.Errorf("call signer at %s: %w", c.socket, ctx.Err())
	}
}

// conn returns connection i, dialling it when there is none or it broke.
func (c *Client) conn(ctx context.Context, i int) (*clientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, net.ErrClosed
	}
	if cc := c.conns[i]; cc != nil && cc.ok() {
		return cc, nil
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, err
	}
	cc := &clientConn{c: nc, w: bufio.NewWriter(nc), pending: map[uint64]chan answer{}}
	cc.w.WriteString(preamble2)
	go cc.readLoop()
	c.conns[i] = cc
	return cc, nil
}

// drop closes cc so that the next call dials again.
func (c *Client) drop(cc *clientConn) {
	cc.fail(errors.New("connection dropped"))
}

// Close closes the connections; calls waiting on them fail.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for i, cc := range c.conns {
		if cc != nil {
			cc.fail(net.ErrClosed)
			c.conns[i] = nil
		}
	}
}

func (cc *clientConn) ok() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err == nil
}

// send registers ch for id's answer and writes the request.
func (cc *clientConn) send(id uint64, pin string, csr *certv1.CertificateSigningRequest, ch chan answer) error {
	if len(pin) > 255 {
		return fmt.Errorf("CA pin %q is too long", pin)
	}
	n := csr.Size()
	h := 8 + 1 + len(pin)
	if h+n > maxFrame {
		return fmt.Errorf("request %q is %d bytes; the limit is %d", csr.Name, n, maxFrame-h)
	}
	buf := make([]byte, 0, 4+h+n)
	buf = appendFrameHeader(buf, h+n)
	buf = binary.BigEndian.AppendUint64(buf, id)
	buf = append(buf, byte(len(pin)))
	buf = append(buf, pin...)
	buf = buf[:4+h+n]
	if _, err := csr.MarshalToSizedBuffer(buf[4+h:]); err != nil {
		return fmt.Errorf("encode request %q: %w", csr.Name, err)
	}
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return cc.err
	}
	cc.pending[id] = ch
	cc.mu.Unlock()
	cc.wmu.Lock()
	_, err := cc.w.Write(buf)
	if err == nil {
		err = cc.w.Flush()
	}
	cc.wmu.Unlock()
	if err != nil {
		cc.fail(err)
	}
	return err
}

func (cc *clientConn) forget(id uint64) {
	cc.mu.Lock()
	delete(cc.pending, id)
	cc.mu.Unlock()
}

// fail closes the connection and fails every waiting call with err.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = err
		for id, ch := range cc.pending {
			ch <- answer{err: err}
			delete(cc.pending, id)
		}
	}
	cc.mu.Unlock()
	cc.c.Close()
}

// readLoop hands answers to their calls until the connection breaks.
func (cc *clientConn) readLoop() {
	r := bufio.NewReader(cc.c)
	for {
		f, err := readFrame(r, nil)
		if err == nil && len(f) < 9 {
			err = fmt.Errorf("answer frame of %d bytes", len(f))
		}
		if err != nil {
			cc.fail(fmt.Errorf("read answer: %w", err))
			return
		}
		id := binary.BigEndian.Uint64(f)
		cc.mu.Lock()
		ch := cc.pending[id]
		delete(cc.pending, id)
		cc.mu.Unlock()
		if ch != nil {
			ch <- answer{code: f[8], body: f[9:]}
		}
	}
}
