package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// guard closes c when the phase overruns its bound, which unblocks every
// read and write (tunnel streams have no deadlines).
func guard(c net.Conn, d time.Duration) (stop func() bool) {
	t := time.AfterFunc(d, func() { c.Close() })
	return t.Stop
}

// bulk measures one connection's throughput in bytes per second: mode
// 'D' reads what the sink sends, 'U' writes to the sink and counts what
// the sink received.
func bulk(p path, mode byte, warm, dur time.Duration) (float64, error) {
	r, _, err := bulkCPU(p, mode, warm, dur)
	return r, err
}

// cpuTime is the CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bulkCPU is bulk that also returns the process's CPU time per GB moved
// (sink included), which other load on the machine disturbs less.
func bulkCPU(p path, mode byte, warm, dur time.Duration) (rate float64, cpuPerGB time.Duration, err error) {
	var cpu0 time.Duration
	var moved int64
	defer func() {
		if err == nil && moved > 0 {
			cpuPerGB = time.Duration(float64(cpuTime()-cpu0) / float64(moved) * 1e9)
		}
	}()
	mark := func() { cpu0 = cpuTime() }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := p.dial(ctx)
	cancel()
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	defer guard(c, warm+dur+15*time.Second)()
	if _, err := c.Write([]byte{mode}); err != nil {
		return 0, 0, err
	}
	buf := make([]byte, bulkBufLen)
	start := time.Now()
	if mode == modeDownload {
		var n int64
		var t0 time.Time
		for {
			m, err := c.Read(buf)
			if err != nil {
				return 0, 0, err
			}
			now := time.Now()
			if t0.IsZero() {
				if now.Sub(start) >= warm {
					t0 = now
					mark()
				}
				continue
			}
			n += int64(m)
			if el := now.Sub(t0); el >= dur {
				moved = n
				return float64(n) / el.Seconds(), 0, nil
			}
		}
	}
	copy(buf, source)
	var written int64
	var w0 int64
	var t0 time.Time
	for {
		m, err := c.Write(buf)
		written += int64(m)
		if err != nil {
			return 0, 0, err
		}
		now := time.Now()
		if t0.IsZero() {
			if now.Sub(start) >= warm {
				t0, w0 = now, written
				mark()
			}
			continue
		}
		if now.Sub(t0) >= dur {
			break
		}
	}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return 0, 0, fmt.Errorf("%T cannot half-close", c)
	}
	if err := cw.CloseWrite(); err != nil {
		return 0, 0, err
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 0, 0, fmt.Errorf("upload count: %w", err)
	}
	el := time.Since(t0)
	got := int64(binary.BigEndian.Uint64(ack[:]))
	if got != written {
		return 0, 0, fmt.Errorf("sink received %d bytes, %d were written", got, written)
	}
	moved = got - w0
	return float64(got-w0) / el.Seconds(), 0, nil
}

// echoConn is a connection in echo mode.
type echoConn struct {
	net.Conn
	buf [msgLen]byte
}

func openEcho(p path, timeout time.Duration) (*echoConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{modeEcho}); err != nil {
		c.Close()
		return nil, err
	}
	return &echoConn{Conn: c}, nil
}

// roundTrip sends one small request and waits for its answer.
func (e *echoConn) roundTrip() (time.Duration, error) {
	t := time.Now()
	binary.BigEndian.PutUint64(e.buf[:], uint64(t.UnixNano()))
	if _, err := e.Conn.Write(e.buf[:]); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(e.Conn, e.buf[:]); err != nil {
		return 0, err
	}
	d := time.Since(t)
	if binary.BigEndian.Uint64(e.buf[:]) != uint64(t.UnixNano()) {
		return 0, errors.New("echo answered the wrong bytes")
	}
	return d, nil
}

// small times n sequential round trips on one reused connection, after a
// warm-up of n/10.
func small(p path, n int) ([]time.Duration, error) {
	c, err := openEcho(p, 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	defer guard(c, 60*time.Second)()
	out := make([]time.Duration, 0, n)
	for i := range n + n/10 {
		d, err := c.roundTrip()
		if err != nil {
			return nil, err
		}
		if i >= n/10 {
			out = append(out, d)
		}
	}
	return out, nil
}

// underLoad times round trips on a stream of p while another stream of p
// carries a bulk download, alternating with round trips on a direct
// connection (the control) under the same load.
func underLoad(p, direct path, dur time.Duration) (tun, ctl []time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	bc, err := p.dial(ctx)
	cancel()
	if err != nil {
		return nil, nil, err
	}
	defer bc.Close()
	defer guard(bc, dur+20*time.Second)()
	if _, err := bc.Write([]byte{modeDownload}); err != nil {
		return nil, nil, err
	}
	var moved int64
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, bulkBufLen)
		for {
			n, err := bc.Read(buf)
			moved += int64(n)
			if err != nil {
				return
			}
		}
	})
	defer wg.Wait()
	defer bc.Close()
	tc, err := openEcho(p, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	defer tc.Close()
	defer guard(tc, dur+20*time.Second)()
	dc, err := openEcho(direct, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	defer dc.Close()
	time.Sleep(200 * time.Millisecond) // let the download reach full speed
	for end := time.Now().Add(dur); time.Now().Before(end) && len(tun) < 50000; {
		d, err := tc.roundTrip()
		if err != nil {
			return nil, nil, err
		}
		tun = append(tun, d)
		if d, err = dc.roundTrip(); err != nil {
			return nil, nil, err
		}
		ctl = append(ctl, d)
	}
	return tun, ctl, nil
}

type concResult struct {
	n, failed       int
	elapsed         time.Duration
	rssPer, heapPer float64 // bytes per open idle connection
	firstErr        error
}

// concurrent opens n connections at once, each doing one round trip, and
// measures memory while they are all open and idle.
func concurrent(p path, n int) (concResult, error) {
	r := concResult{n: n}
	g0 := runtime.NumGoroutine()
	conns := make([]*echoConn, n)
	errs := make([]error, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			c, err := openEcho(p, 20*time.Second)
			if err == nil {
				stop := guard(c, 30*time.Second)
				_, err = c.roundTrip()
				stop()
				if err != nil {
					c.Close()
				}
			}
			if err != nil {
				errs[i] = err
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	r.elapsed = time.Since(start)
	time.Sleep(200 * time.Millisecond)
	rss1, heap1 := memory()
	open := 0
	for i, c := range conns {
		if c != nil {
			open++
			c.Close()
		} else {
			r.failed++
			if r.firstErr == nil {
				r.firstErr = errs[i]
			}
		}
	}
	// Memory is compared with the same process once the connections are
	// closed and every goroutine they had has ended.
	waitFor(10*time.Second, func() bool { return runtime.NumGoroutine() <= g0 })
	time.Sleep(200 * time.Millisecond)
	rss0, heap0 := memory()
	if open > 0 {
		r.rssPer = float64(rss1-rss0) / float64(open)
		r.heapPer = float64(heap1-heap0) / float64(open)
	}
	return r, nil
}

type idleResult struct {
	n               int
	elapsed         time.Duration
	rssPer, heapPer float64
}

// idleAgents starts n more agents, each with its own node certificate and
// tunnel, and measures the memory per idle tunnel (both ends).
func (e *env) idleAgents(n int) (idleResult, error) {
	r := idleResult{n: n}
	if n == 0 {
		return r, nil
	}
	g0 := runtime.NumGoroutine()
	stops := make([]func(), 0, n)
	stopAll := func() {
		var wg sync.WaitGroup
		for _, s := range stops {
			wg.Go(s)
		}
		wg.Wait()
		stops = nil
	}
	defer stopAll()
	start := time.Now()
	names := make([]string, n)
	for i := range n {
		names[i] = "idle-" + strconv.Itoa(i)
		s, err := e.startAgent(names[i], false)
		if err != nil {
			return r, err
		}
		stops = append(stops, s)
	}
	if err := waitFor(30*time.Second, func() bool {
		for _, nm := range names {
			if e.srv.Conns(nm) == 0 {
				return false
			}
		}
		return true
	}); err != nil {
		return r, fmt.Errorf("%d agents did not all connect: %w", n, err)
	}
	r.elapsed = time.Since(start)
	time.Sleep(500 * time.Millisecond)
	rss1, heap1 := memory()
	// Compared with the same process once the agents have stopped and the
	// server has closed their tunnels.
	stopAll()
	waitFor(10*time.Second, func() bool { return runtime.NumGoroutine() <= g0 })
	time.Sleep(200 * time.Millisecond)
	rss0, heap0 := memory()
	r.rssPer = float64(rss1-rss0) / float64(n)
	r.heapPer = float64(heap1-heap0) / float64(n)
	return r, nil
}

// memory returns the process's resident set and the Go heap in use plus
// goroutine stacks, after a GC that returns freed memory to the OS.
func memory() (rss, heap int64) {
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap = int64(ms.HeapInuse + ms.StackInuse)
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, heap
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			rss = kb << 10
		}
	}
	return rss, heap
}

// pct returns the p-th percentile of ds.
func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	i = min(max(i, 0), len(s)-1)
	return float64(s[i])
}

// startProfile writes a CPU profile while on is set.
func startProfile(file string, on bool) func() {
	if file == "" || !on {
		return func() {}
	}
	f, err := os.Create(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tunnelbench: cpuprofile:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
