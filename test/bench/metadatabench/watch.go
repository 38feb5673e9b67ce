package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/test/bench/benchkit"
)

// watchRun is one server under the long-poll load.
type watchRun struct {
	idle, parked benchkit.Mem    // the server's memory before the first watcher and with all parked
	setup        time.Duration   // to open, GET and park every watcher
	parkedCPU    float64         // CPUs the server used with all parked and nothing happening
	wakeCPU      benchkit.CPUUse // from the change to the last answer
	n            int
	woken        int // answered after the change with the expected value
	p50, p99     time.Duration
	max          time.Duration
	first        time.Duration
	errs         int // failed set-ups, early or wrong answers, no answer
	firstErr     error
}

type watchResult struct {
	hello, meta watchRun
}

// watchTarget is what runWatch needs to know about a server.
type watchTarget struct {
	name    string
	addr    string
	pid     int
	parked  func() (int, error) // long-polls the server holds
	trigger func() error        // change the watched value
	want    func(inst int) string
}

// benchWatch parks o.watchers long-polls on the baseline and then on the
// metadata server, and wakes them all with one change.
func benchWatch(o options, dir string) (*watchResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	res := &watchResult{}

	// Baseline: net/http handlers blocked on a channel that SIGHUP closes.
	addr, err := benchkit.FreeAddr()
	if err != nil {
		return nil, err
	}
	c, err := benchkit.StartChild("hello-world baseline", filepath.Join(dir, "watch-hello.log"), self, helloFlag, addr)
	if err != nil {
		return nil, err
	}
	if err := c.WaitReady(addr); err != nil {
		c.Stop()
		return nil, err
	}
	res.hello, err = runWatch(o, watchTarget{
		name:    "hello-world baseline",
		addr:    addr,
		pid:     c.PID(),
		parked:  func() (int, error) { return scrape("http://"+addr+"/parked", "") },
		trigger: func() error { return syscall.Kill(c.PID(), syscall.SIGHUP) },
		want:    func(int) string { return string(helloBody) },
	})
	c.Stop()
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}

	// nodetrust metadata.
	dataPath := filepath.Join(dir, "watch.yaml")
	if err := os.WriteFile(dataPath, dataFile(1, o.instances), 0o644); err != nil {
		return nil, err
	}
	next := dataFile(2, o.instances)
	if addr, err = benchkit.FreeAddr(); err != nil {
		return nil, err
	}
	maddr, err := benchkit.FreeAddr()
	if err != nil {
		return nil, err
	}
	perCaller := (o.watchers + o.instances - 1) / o.instances
	c, err = benchkit.StartChild("nodetrust metadata", filepath.Join(dir, "watch-metadata.log"), o.bin,
		"metadata", "--listen", addr, "--data", dataPath, "--metrics-listen", maddr, "--log-level", "warn",
		"--max-watchers", strconv.Itoa(max(20000, o.watchers)),
		"--max-watchers-per-caller", strconv.Itoa(max(256, perCaller)))
	if err != nil {
		return nil, err
	}
	if err := c.WaitReady(addr); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.WaitReady(maddr); err != nil {
		c.Stop()
		return nil, err
	}
	res.meta, err = runWatch(o, watchTarget{
		name:   "nodetrust metadata",
		addr:   addr,
		pid:    c.PID(),
		parked: func() (int, error) { return scrape("http://"+maddr+"/metrics", "nodetrust_metadata_watchers") },
		trigger: func() error {
			if err := writeAtomic(dataPath, next); err != nil {
				return err
			}
			return syscall.Kill(c.PID(), syscall.SIGHUP)
		},
		want: func(inst int) string { return watchValue(2, inst) },
	})
	c.Stop()
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	return res, nil
}

// runWatch opens o.watchers connections from the instances' host addresses;
// each GETs watch-key to learn its ETag, then long-polls it on the same
// connection. When the server holds all of them, it reads the server's
// memory, changes the value and times every answer.
func runWatch(o options, t watchTarget) (watchRun, error) {
	n := o.watchers
	r := watchRun{n: n}
	benchkit.WaitQuiet(5 * time.Second)
	var err error
	if r.idle, err = benchkit.ReadMem(t.pid); err != nil {
		return r, err
	}
	fmt.Fprintf(os.Stderr, "watch: %s: parking %d long-polls from %d addresses ... ", t.name, n, o.instances)

	type outcome struct {
		at  time.Time
		err error
	}
	var (
		out      = make([]outcome, n)
		t0       atomic.Pointer[time.Time]
		setupWG  sync.WaitGroup
		answerWG sync.WaitGroup
		sem      = make(chan struct{}, 128)
		connMu   sync.Mutex
		conns    []net.Conn
	)
	for i := range out {
		out[i].err = errors.New("no answer within 60s")
	}
	start := time.Now()
	setupWG.Add(n)
	answerWG.Add(n)
	for i := range n {
		inst := i%o.instances + 1
		go func() {
			defer answerWG.Done()
			var setupOnce sync.Once
			setupDone := func() { setupOnce.Do(setupWG.Done) }
			defer setupDone()
			sem <- struct{}{}
			conn, br, err := parkOne(t.addr, inst)
			<-sem
			if err != nil {
				out[i].err = err
				return
			}
			connMu.Lock()
			conns = append(conns, conn)
			connMu.Unlock()
			defer conn.Close()
			setupDone()
			conn.SetDeadline(time.Now().Add(90 * time.Second))
			st, _, body, _, err := readResponse(br)
			o := outcome{at: time.Now()}
			switch z := t0.Load(); {
			case err != nil:
				o.err = err
			case z == nil:
				o.err = fmt.Errorf("answered before the change: %d %q", st, body)
			case st != 200 || string(body) != t.want(inst):
				o.err = fmt.Errorf("answer %d %q, want 200 %q", st, body, t.want(inst))
			}
			out[i] = o
		}()
	}
	cleanup := func() {
		connMu.Lock()
		for _, c := range conns {
			c.Close()
		}
		connMu.Unlock()
		waitTimeout(&answerWG, 10*time.Second)
	}
	if !waitTimeout(&setupWG, 60*time.Second) {
		cleanup()
		return r, errors.New("watchers not set up after 60s")
	}
	// The server must hold all of them.
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := t.parked()
		if err == nil && p == n {
			break
		}
		if time.Now().After(deadline) {
			cleanup()
			return r, fmt.Errorf("server holds %d long-polls, not %d, after 30s (scrape error %v; first watcher error %v)",
				p, n, err, firstErr(out, func(o outcome) error { return o.err }))
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.setup = time.Since(start)
	r.parked = settledMem(t.pid)
	a := benchkit.SampleCPU(t.pid)
	time.Sleep(3 * time.Second)
	r.parkedCPU = benchkit.CPUBetween(a, benchkit.SampleCPU(t.pid)).Proc(0)
	fmt.Fprintf(os.Stderr, "in %v, RSS %s (HWM %s), idle CPU %.3f; waking ... ",
		r.setup.Round(time.Millisecond), benchkit.MB(r.parked.RSS), benchkit.MB(r.parked.HWM), r.parkedCPU)

	a = benchkit.SampleCPU(t.pid)
	now := a.At
	t0.Store(&now)
	if err := t.trigger(); err != nil {
		cleanup()
		return r, err
	}
	if !waitTimeout(&answerWG, 60*time.Second) {
		cleanup()
	}
	r.wakeCPU = benchkit.CPUBetween(a, benchkit.SampleCPU(t.pid))
	var lat []time.Duration
	for _, o := range out {
		if o.err != nil {
			r.errs++
			if r.firstErr == nil {
				r.firstErr = o.err
			}
			continue
		}
		lat = append(lat, o.at.Sub(now))
	}
	r.woken = len(lat)
	if len(lat) > 0 {
		slices.Sort(lat)
		r.first = lat[0]
		r.p50 = lat[len(lat)*50/100]
		r.p99 = lat[len(lat)*99/100]
		r.max = lat[len(lat)-1]
	}
	fmt.Fprintf(os.Stderr, "%d/%d woken, p99 %v, max %v\n", r.woken, n, r.p99, r.max)
	return r, nil
}

// parkOne connects from watch instance inst's host address, GETs watch-key
// for its ETag and sends the long-poll.
func parkOne(addr string, inst int) (net.Conn, *bufio.Reader, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(watchAddr(inst))}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write(getRequest(watchPath)); err != nil {
		conn.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, 2048)
	st, etag, body, closeConn, err := readResponse(br)
	if err == nil && (st != 200 || closeConn) {
		err = fmt.Errorf("GET watch-key: status %d, close %v, body %q", st, closeConn, body)
	}
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	q := "?wait_for_change=true&timeout_sec=120&last_etag=" + etag
	if _, err := conn.Write(getRequest(watchPath + q)); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, br, nil
}

// settledMem reads the server's memory once it stops moving (within 0.5%
// over three reads 200 ms apart, or after 5 s).
func settledMem(pid int) benchkit.Mem {
	var last benchkit.Mem
	stable := 0
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && stable < 3; {
		time.Sleep(200 * time.Millisecond)
		m, err := benchkit.ReadMem(pid)
		if err != nil {
			break
		}
		if d := m.RSS - last.RSS; d < 0 && -d*200 < m.RSS || d >= 0 && d*200 < m.RSS {
			stable++
		} else {
			stable = 0
		}
		last = m
	}
	return last
}

// scrape GETs url and returns the number it holds: the whole body, or the
// value of the Prometheus sample named metric.
func scrape(url, metric string) (int, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	if metric == "" {
		return strconv.Atoi(strings.TrimSpace(string(b)))
	}
	for line := range bytes.Lines(b) {
		if f := strings.Fields(string(line)); len(f) == 2 && f[0] == metric {
			v, err := strconv.ParseFloat(f[1], 64)
			return int(v), err
		}
	}
	return 0, fmt.Errorf("%s: no %s", url, metric)
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func firstErr[T any](s []T, f func(T) error) error {
	for _, v := range s {
		if err := f(v); err != nil {
			return err
		}
	}
	return nil
}
