package tunnel

import (
	"io"
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
