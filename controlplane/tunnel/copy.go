package tunnel

import (
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, tunnelwire.CopyBufferLen)
	return &b
}}

// copyCounted copies src to dst with a pooled buffer and counts the bytes;
// it returns nil at EOF.
func copyCounted(dst io.Writer, src io.Reader, n prometheus.Counter) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n.Add(float64(nw))
			if werr != nil {
				return werr
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// parsePort accepts only plain decimal 1-65535.
func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint16(n), true
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

// batchWriter is the tunnel connection as the HTTP/2 client sees it: writes of more
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
