package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodetrust/nodetrust/test/bench/benchkit"
)

// loadResult is one measured run of the GET load generator.
type loadResult struct {
	reqs     int64         // requests answered 200 inside the window
	errs     int64         // errors and non-200 answers over the whole run
	window   time.Duration // measured time
	p50, p99 time.Duration
	mem      benchkit.Mem    // the server's, read after the run
	cpu      benchkit.CPUUse // during the measured window
}

func (r loadResult) rate() float64 { return float64(r.reqs) / r.window.Seconds() }

// getRequest is the request of the GET benchmark, the same bytes for the
// metadata server and the baseline.
func getRequest(path string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\n" +
		"Host: metadata.google.internal\r\n" +
		"User-Agent: metadatabench\r\n" +
		"Metadata-Flavor: Google\r\n\r\n")
}

// runLoad keeps conns keep-alive connections to addr busy with req, one
// request at a time each, like wrk: warmup first, then duration measured.
// Every request whose round trip lies inside the window is counted and
// timed.
func runLoad(addr string, req []byte, conns int, warmup, duration time.Duration) (loadResult, error) {
	begin := time.Now()
	from := begin.Add(warmup)
	to := from.Add(duration)
	var (
		errs    atomic.Int64
		mu      sync.Mutex
		samples []time.Duration
		firstE  error
		wg      sync.WaitGroup
	)
	for range conns {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 1<<16)
			var conn net.Conn
			var br *bufio.Reader
			fail := func(err error) {
				errs.Add(1)
				mu.Lock()
				if firstE == nil {
					firstE = err
				}
				mu.Unlock()
				if conn != nil {
					conn.Close()
					conn = nil
				}
				time.Sleep(10 * time.Millisecond)
			}
			for time.Now().Before(to) {
				if conn == nil {
					c, err := net.DialTimeout("tcp", addr, 5*time.Second)
					if err != nil {
						fail(err)
						continue
					}
					c.SetDeadline(to.Add(10 * time.Second))
					conn, br = c, bufio.NewReaderSize(c, 16<<10)
				}
				t0 := time.Now()
				if _, err := conn.Write(req); err != nil {
					fail(err)
					continue
				}
				st, closeConn, err := discardResponse(br)
				t1 := time.Now()
				if err != nil {
					fail(err)
					continue
				}
				if st != 200 {
					fail(fmt.Errorf("status %d", st))
					continue
				}
				if closeConn {
					conn.Close()
					conn = nil
				}
				if !t0.Before(from) && !t1.After(to) {
					lat = append(lat, t1.Sub(t0))
				}
			}
			if conn != nil {
				conn.Close()
			}
			mu.Lock()
			samples = append(samples, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	res := loadResult{reqs: int64(len(samples)), errs: errs.Load(), window: duration}
	if len(samples) == 0 {
		return res, fmt.Errorf("no request answered 200 (first error: %v)", firstE)
	}
	slices.Sort(samples)
	res.p50 = samples[len(samples)*50/100]
	res.p99 = samples[len(samples)*99/100]
	if res.errs > 0 {
		return res, fmt.Errorf("%d errors (first: %v)", res.errs, firstE)
	}
	return res, nil
}

var errMalformed = errors.New("malformed HTTP response")

// readHead reads a response's status line and headers. etag, when not nil,
// receives a copy of the ETag header.
func readHead(br *bufio.Reader, etag *string) (status int, length int64, closeConn bool, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, 0, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, 0, false, errMalformed
	}
	status = atoi(line[9:12])
	closeConn = line[7] == '0'
	length = -1
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			return 0, 0, false, err
		}
		if len(line) <= 2 {
			break
		}
		switch {
		case hasPrefixFold(line, "content-length:"):
			length = int64(atoi(bytes.TrimSpace(line[15:])))
		case hasPrefixFold(line, "connection:"):
			closeConn = bytes.EqualFold(bytes.TrimSpace(line[11:]), []byte("close"))
		case etag != nil && hasPrefixFold(line, "etag:"):
			*etag = string(bytes.TrimSpace(line[5:]))
		}
	}
	if length < 0 {
		return 0, 0, false, fmt.Errorf("%w: no Content-Length", errMalformed)
	}
	return status, length, closeConn, nil
}

// discardResponse reads one response and drops its body.
func discardResponse(br *bufio.Reader) (status int, closeConn bool, err error) {
	status, n, closeConn, err := readHead(br, nil)
	if err != nil {
		return 0, false, err
	}
	if _, err := br.Discard(int(n)); err != nil {
		return 0, false, err
	}
	return status, closeConn, nil
}

// readResponse reads one response with its body (at most 64 KiB).
func readResponse(br *bufio.Reader) (status int, etag string, body []byte, closeConn bool, err error) {
	status, n, closeConn, err := readHead(br, &etag)
	if err != nil {
		return 0, "", nil, false, err
	}
	if n > 64<<10 {
		return 0, "", nil, false, fmt.Errorf("%w: body of %d bytes", errMalformed, n)
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return 0, "", nil, false, err
	}
	return status, etag, body, closeConn, nil
}

func hasPrefixFold(b []byte, p string) bool {
	return len(b) >= len(p) && bytes.EqualFold(b[:len(p)], []byte(p))
}

func atoi(b []byte) int {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}
