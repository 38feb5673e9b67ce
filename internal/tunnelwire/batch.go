package tunnelwire

import (
	"crypto/tls"
	"net"
	"sync"
)

// BatchConn sits under TLS on both ends of a tunnel. crypto/tls writes
// every record (at most 16 KiB) with its own write call; while a large
// write is in progress (see BatchWriter) BatchConn gathers the records and
// writes them in chunks of batchLen, which on a bulk stream saves most of
// the system calls. Small writes, handshakes and alerts go straight
// through.
//
// Reads are gathered too: crypto/tls asks for about one record per read,
// so once a read fills the caller's buffer (more is probably waiting),
// BatchConn reads up to batchLen at once into a pooled buffer and serves
// the next reads from it. It goes back to direct reads as soon as a read
// brings no more than was asked for, so an idle connection holds no
// buffer (at most one, until its next frame or keepalive ping).
type BatchConn struct {
	net.Conn
	mu  sync.Mutex // guards buf
	buf *[]byte    // non-nil while batching

	// Read state; crypto/tls reads from one goroutine at a time.
	rbuf      *[]byte // pooled, holds rbuf[rpos:] unread; nil when empty
	rpos      int
	streaming bool // the last read filled its buffer
}

// NewBatchConn wraps a raw connection; put TLS on top of it.
func NewBatchConn(c net.Conn) *BatchConn { return &BatchConn{Conn: c} }

// streamingMin is the smallest filled read after which BatchConn reads
// ahead: the handshake and the HTTP/2 preface fill small reads too.
const streamingMin = 4 << 10

// batchLen is the most BatchConn gathers before it writes.
const batchLen = 256 << 10

// batchMin is the smallest write BatchWriter gathers: below it, there are
// too few records to gain anything.
const batchMin = 64 << 10

var batchPool = sync.Pool{New: func() any {
	b := make([]byte, 0, batchLen)
	return &b
}}

func (c *BatchConn) Read(p []byte) (int, error) {
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
		// Copy out before the buffer goes back to the pool: another
		// connection may take it at once.
		k := copy(p, b[:n])
		batchPool.Put(bp)
		return k, err
	}
	// Keep the rest; an error comes back from the next read of the conn.
	*bp = b[:n]
	c.rbuf, c.rpos = bp, copy(p, b)
	return c.rpos, nil
}

func (c *BatchConn) Write(p []byte) (int, error) {
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

func (c *BatchConn) flushLocked() error {
	b := *c.buf
	*c.buf = b[:0]
	if len(b) == 0 {
		return nil
	}
	_, err := c.Conn.Write(b)
	return err
}

// start begins gathering writes; end writes what was gathered and stops.
func (c *BatchConn) start() {
	c.mu.Lock()
	c.buf = batchPool.Get().(*[]byte)
	*c.buf = (*c.buf)[:0]
	c.mu.Unlock()
}

func (c *BatchConn) end() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	batchPool.Put(c.buf)
	c.buf = nil
	return err
}

// BatchWriter is the tunnel's TLS connection as HTTP/2 sees it: writes of
// batchMin or more are gathered by the BatchConn under the TLS connection.
// HTTP/2 writes frames one at a time on both ends, which BatchWriter
// relies on.
type BatchWriter struct {
	*tls.Conn
	batch *BatchConn
}

// NewBatchWriter returns conn as HTTP/2 should write to it, or conn itself
// when it does not sit on a BatchConn.
func NewBatchWriter(conn *tls.Conn) net.Conn {
	bc, ok := conn.NetConn().(*BatchConn)
	if !ok {
		return conn
	}
	return &BatchWriter{Conn: conn, batch: bc}
}

func (w *BatchWriter) Write(p []byte) (int, error) {
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
