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

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, tunnelwire.CopyBufferLen)
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
	copyCounted(w, conn, c.m.bytes.WithLabelValues("out"), rc.Flush)
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
