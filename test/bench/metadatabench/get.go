package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nodetrust/nodetrust/test/bench/benchkit"
)

// getResult holds the runs of the GET benchmark.
type getResult struct {
	hello, meta []loadResult
	disturbed   int // runs thrown away because other processes used the CPUs
}

// benchGet runs the hello-world baseline and the metadata server o.runs times
// each, alternating, each run a fresh process.
func benchGet(o options, dir string) (*getResult, error) {
	dataPath := filepath.Join(dir, "get.yaml")
	if err := os.WriteFile(dataPath, dataFile(1, o.instances), 0o644); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	req := getRequest(smallPath)
	res := &getResult{}
	reruns := o.reruns
	for run := 1; run <= o.runs; run++ {
		for i := 0; i < 2; i++ {
			meta := i == 1
			benchkit.WaitQuiet(5 * time.Second)
			addr, err := benchkit.FreeAddr()
			if err != nil {
				return nil, err
			}
			var c *benchkit.Child
			name := "hello-world baseline"
			if meta {
				name = "nodetrust metadata"
				c, err = benchkit.StartChild(name, filepath.Join(dir, fmt.Sprintf("get-metadata-%d.log", run)), o.bin,
					"metadata", "--listen", addr, "--data", dataPath, "--log-level", "warn")
			} else {
				c, err = benchkit.StartChild(name, filepath.Join(dir, fmt.Sprintf("get-hello-%d.log", run)), self, helloFlag, addr)
			}
			if err != nil {
				return nil, err
			}
			if err := c.WaitReady(addr); err != nil {
				c.Stop()
				return nil, err
			}
			if err := checkGet(addr, req, meta); err != nil {
				c.Stop()
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			fmt.Fprintf(os.Stderr, "GET run %d/%d: %s, %d connections, %v warm-up + %v ... ",
				run, o.runs, name, o.conns, o.warmup, o.duration)
			cpuc := make(chan benchkit.CPUUse, 1)
			go func() {
				time.Sleep(o.warmup)
				a := benchkit.SampleCPU(c.PID())
				time.Sleep(o.duration)
				cpuc <- benchkit.CPUBetween(a, benchkit.SampleCPU(c.PID()))
			}()
			r, err := runLoad(addr, req, o.conns, o.warmup, o.duration)
			r.cpu = <-cpuc
			if err == nil {
				r.mem, err = benchkit.ReadMem(c.PID())
			}
			c.Stop()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			fmt.Fprintf(os.Stderr, "%.0f req/s, p50 %v, p99 %v, RSS %s, CPUs: server %.2f, bench %.2f, other %.2f\n",
				r.rate(), r.p50, r.p99, benchkit.MB(r.mem.RSS), r.cpu.Proc(0), r.cpu.Self, r.cpu.Foreign)
			if r.cpu.Foreign > o.maxOther && reruns > 0 {
				reruns--
				fmt.Fprintf(os.Stderr, "GET run %d/%d: other processes used %.2f CPUs; running it again\n", run, o.runs, r.cpu.Foreign)
				res.disturbed++
				i--
				continue
			}
			if meta {
				res.meta = append(res.meta, r)
			} else {
				res.hello = append(res.hello, r)
			}
		}
	}
	return res, nil
}

// checkGet makes sure the server answers req with the expected body before
// it is measured: a benchmark of 403s would be worthless.
func checkGet(addr string, req []byte, meta bool) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(req); err != nil {
		return err
	}
	st, _, body, _, err := readResponse(bufio.NewReader(c))
	if err != nil {
		return err
	}
	want := string(helloBody)
	if meta {
		want = smallValue
	}
	if st != 200 || string(body) != want {
		return fmt.Errorf("check GET: status %d, body %q; want 200, %q", st, body, want)
	}
	return nil
}

// median of the runs, metric by metric.
func median(rs []loadResult) loadResult {
	pick := func(f func(loadResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return loadResult{
		reqs:   int64(pick(func(r loadResult) float64 { return r.rate() })),
		window: time.Second,
		errs:   int64(pick(func(r loadResult) float64 { return float64(r.errs) })),
		p50:    time.Duration(pick(func(r loadResult) float64 { return float64(r.p50) })),
		p99:    time.Duration(pick(func(r loadResult) float64 { return float64(r.p99) })),
		mem: benchkit.Mem{
			RSS: int64(pick(func(r loadResult) float64 { return float64(r.mem.RSS) })),
			HWM: int64(pick(func(r loadResult) float64 { return float64(r.mem.HWM) })),
		},
	}
}
