package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// copyBufferLen is the size of the pooled buffers that carry a stream's
// bytes, larger than tunnelwire.CopyBufferLen: every write to the stream is
// a hop to the HTTP/2 server's goroutines, so bulk transfers want few,
// large writes (measured with test/bench/tunnelbench).
const copyBufferLen = 256 << 10

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, copyBufferLen)
	return &b
}}

// refusalStatus maps a refusal reason to its HTTP status.
var refusalStatus = map[string]int{
	tunnelwire.RefusedNotAllowed:   http.StatusForbidden,
	tunnelwire.RefusedBadTarget:    http.StatusBadRequest,
	tunnelwire.RefusedResolve:      http.StatusBadGateway,
	tunnelwire.RefusedDialFailed:   http.StatusBadGateway,
	tunnelwire.RefusedBadMethod:    http.StatusMethodNotAllowed,
	tunnelwire.RefusedShuttingDown: http.StatusServiceUnavailable,
}

// serveStream answers one CONNECT stream: it checks the destination
// against the allowlist, dials it and copies bytes both ways until the
// destination closes or the stream is reset.
func (c *Client) serveStream(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		c.refuse(w, r, &refusal{tunnelwire.RefusedBadMethod, "the tunnel only carries CONNECT streams"})
		return
	}
	dests, ref := c.destinations(r.Context(), r.Host)
	if ref != nil {
		c.refuse(w, r, ref)
		return
	}
	conn, err := c.dialDest(r.Context(), dests)
	if err != nil {
		c.refuse(w, r, &refusal{tunnelwire.RefusedDialFailed, fmt.Sprintf("dial %s: %v", r.Host, err)})
		return
	}
	defer conn.Close()
	c.m.streams.Inc()
	defer c.m.streams.Dec()
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		return
	}
	c.handlers.Add(1)
	go func() { // control plane -> destination
		defer c.handlers.Done()
		_, err := copyCounted(conn, r.Body, c.m.bytes.WithLabelValues("in"), nil)
		if tc, ok := conn.(*net.TCPConn); ok && err == nil {
			tc.CloseWrite() // half-close: the destination may still answer
			return
		}
		conn.Close()
	}()
	// destination -> control plane; the stream ends when this ends.
	copyPipelined(w, conn, c.m.bytes.WithLabelValues("out"), rc.Flush, func() { conn.Close() })
}

// copyPipelined is copyCounted with the reads of src in a goroutine of
// their own and two buffers, so that reading the destination overlaps the
// previous chunk's trip through HTTP/2 and TLS (a write to the stream
// returns only once its frames are written). abort must unblock src's
// reads; it is called when dst fails. It returns once both goroutines have
// ended.
func copyPipelined(dst io.Writer, src io.Reader, n prometheus.Counter, flush func() error, abort func()) (int64, error) {
	type chunk struct {
		buf *[]byte
		n   int
		err error
	}
	full := make(chan chunk, 1)
	free := make(chan *[]byte, 2)
	free <- bufPool.Get().(*[]byte)
	free <- bufPool.Get().(*[]byte)
	go func() {
		defer close(full)
		for {
			bp := <-free
			nr, err := src.Read(*bp)
			full <- chunk{bp, nr, err}
			if err != nil {
				return
			}
		}
	}()
	var total int64
	var werr error
	for ch := range full {
		if ch.n > 0 && werr == nil {
			nw, err := dst.Write((*ch.buf)[:ch.n])
			total += int64(nw)
			n.Add(float64(nw))
			if err == nil && flush != nil {
				err = flush()
			}
			if err != nil {
				werr = err
				abort()
			}
		}
		free <- ch.buf
		if ch.err != nil && werr == nil && ch.err != io.EOF {
			werr = ch.err
		}
	}
	close(free)
	for bp := range free {
		bufPool.Put(bp)
	}
	return total, werr
}

// dialDest dials the candidates in order and returns the first connection.
func (c *Client) dialDest(ctx context.Context, dests []netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	var errs []error
	d := &net.Dialer{}
	for _, a := range dests {
		conn, err := d.DialContext(ctx, "tcp", a.String())
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// refuse answers a stream with the refusal's status, reason header and
// message, counts it and logs it.
func (c *Client) refuse(w http.ResponseWriter, r *http.Request, ref *refusal) {
	c.m.refusals.WithLabelValues(ref.reason).Inc()
	c.log.Warn("tunnel stream refused", "destination", r.Host, "reason", ref.reason, "err", ref.msg)
	w.Header().Set(tunnelwire.HeaderRefusal, ref.reason)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	status := refusalStatus[ref.reason]
	if status == 0 {
		status = http.StatusBadGateway
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "nodetrust agent: %s\n", ref.msg)
}

// copyCounted copies src to dst with a pooled buffer, counting bytes and
// flushing after each write when flush is set. It returns nil at EOF.
func copyCounted(dst io.Writer, src io.Reader, n prometheus.Counter, flush func() error) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var total int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			total += int64(nw)
			n.Add(float64(nw))
			if werr == nil && flush != nil {
				werr = flush()
			}
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}
