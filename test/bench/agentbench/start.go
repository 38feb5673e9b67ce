package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/test/bench/benchkit"
	"github.com/nodetrust/nodetrust/test/harness"
)

// credFile is where the agent keeps its client certificate and key,
// relative to its state folder.
const credFile = "pki/kubelet-client-current.pem"

// startResult is the start-to-credentials measurement.
type startResult struct {
	node               string
	proc, procBase     []time.Duration // nodetrust agent --once; baseline https process
	inproc, inprocBase []time.Duration // agent.New + Once; one HTTPS request in-process
	steps              [][]time.Duration
	keySign            time.Duration   // P-256 key generation + CSR signature, median
	cpu                benchkit.CPUUse // over the whole measurement
	quiet              float64         // CPUs other processes used just before
}

// stepNames are the in-process steps, each ending at a log message of the
// agent (or, for the last, at Once's return).
var stepNames = []string{
	"New + metadata",       // "bootstrapping": token and CA read from metadata, CA written
	"key + CSR created",    // "created certificate signing request": node name, key, TLS, POST
	"approved + signed",    // "certificate issued": watch until the certificate is in the status
	"credentials written",  // "certificate obtained": key + certificate file, kubeconfig
	"status file + return", // Once returns
}

var stepMessages = []string{"bootstrapping", "created certificate signing request", "certificate issued", "certificate obtained"}

// benchStart times bootstraps of node 0 from a fresh state folder: the
// agent as a process and in-process, each alternating with its baseline,
// after one untimed run of each.
func benchStart(o options, env *harness.Env) (*startResult, error) {
	dir := filepath.Join(o.dir, "start")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(caFile, env.CAPEM, 0o600); err != nil {
		return nil, err
	}
	r := &startResult{node: env.Nodes[0], quiet: benchkit.WaitQuiet(o.quiet)}
	api := env.APIURL + "/healthz"
	cpu0 := benchkit.SampleCPU()
	for k := -1; k < o.runs; k++ {
		d, err := procOnce(o, env, filepath.Join(dir, fmt.Sprintf("proc-%02d", k+1)), r.node)
		if err != nil {
			return nil, err
		}
		b, err := procBaseline(o, filepath.Join(dir, fmt.Sprintf("base-%02d.log", k+1)), api, caFile)
		if err != nil {
			return nil, err
		}
		if k >= 0 { // the first run of each warms caches and is not counted
			r.proc = append(r.proc, d)
			r.procBase = append(r.procBase, b)
		}
	}
	for k := -1; k < o.runs; k++ {
		d, steps, err := inprocOnce(env, filepath.Join(dir, fmt.Sprintf("inproc-%02d", k+1)), r.node)
		if err != nil {
			return nil, err
		}
		b, err := inprocBaseline(api, env.CAPEM)
		if err != nil {
			return nil, err
		}
		if k >= 0 {
			r.inproc = append(r.inproc, d)
			r.inprocBase = append(r.inprocBase, b)
			r.steps = append(r.steps, steps)
		}
	}
	r.cpu = benchkit.CPUBetween(cpu0, benchkit.SampleCPU())
	r.keySign = keySignTime(200)
	return r, nil
}

// writeConfig writes an agent configuration for a state folder under dir
// and returns its path and the state folder.
func writeConfig(dir string, env *harness.Env, metricsListen string) (cfg, state string, err error) {
	state = filepath.Join(dir, "state")
	cfg = filepath.Join(dir, "agent.yaml")
	body := "server: " + env.APIURL + "\nstateDir: " + state + "\nmetadata: {host: '" + env.MDAddr + "'}\n"
	if metricsListen != "" {
		body += "metricsListen: '" + metricsListen + "'\n"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	return cfg, state, os.WriteFile(cfg, []byte(body), 0o600)
}

// procOnce runs `nodetrust agent --once` with a fresh state folder and
// returns the time from exec to its exit, after checking the credentials.
func procOnce(o options, env *harness.Env, dir, node string) (time.Duration, error) {
	cfg, state, err := writeConfig(dir, env, "")
	if err != nil {
		return 0, err
	}
	c, err := benchkit.StartChild("nodetrust agent --once", filepath.Join(dir, "agent.log"), o.bin, "agent", "--once", "--timeout", "30s", "--config", cfg)
	if err != nil {
		return 0, err
	}
	d, err := c.Wait(time.Minute)
	if err != nil {
		return 0, err
	}
	return d, checkCredentials(state, node)
}

// procBaseline runs the baseline program's one HTTPS request.
func procBaseline(o options, logPath, url, caFile string) (time.Duration, error) {
	c, err := benchkit.StartChild("baseline https", logPath, o.baseline, "https", url, caFile)
	if err != nil {
		return 0, err
	}
	return c.Wait(time.Minute)
}

// inprocOnce bootstraps with agent.New + Once in this process, as the agent
// command does, and returns the total time and the time of each step.
func inprocOnce(env *harness.Env, dir, node string) (time.Duration, []time.Duration, error) {
	cfgPath, state, err := writeConfig(dir, env, "")
	if err != nil {
		return 0, nil, err
	}
	cfg, err := agent.LoadConfig(cfgPath)
	if err != nil {
		return 0, nil, err
	}
	rec := &stepLog{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	a, err := agent.New(cfg, agent.Options{Logger: slog.New(rec), Clock: clock.Real{}})
	if err != nil {
		return 0, nil, err
	}
	if err := a.Once(ctx); err != nil {
		return 0, nil, err
	}
	total := time.Since(t0)
	if err := checkCredentials(state, node); err != nil {
		return 0, nil, err
	}
	steps, err := rec.steps(t0, t0.Add(total))
	return total, steps, err
}

// inprocBaseline makes one HTTPS request on a new transport, with the
// agent's TLS and HTTP settings.
func inprocBaseline(url string, caPEM []byte) (time.Duration, error) {
	t0 := time.Now()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(url)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return time.Since(t0), nil
}

// checkCredentials checks that the state folder holds a client
// certificate for node, with its key.
func checkCredentials(state, node string) error {
	path := filepath.Join(state, credFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	var cert *x509.Certificate
	key := false
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		switch blk.Type {
		case "CERTIFICATE":
			if cert == nil {
				if cert, err = x509.ParseCertificate(blk.Bytes); err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
			}
		case "PRIVATE KEY", "EC PRIVATE KEY":
			key = true
		}
	}
	switch {
	case cert == nil || !key:
		return fmt.Errorf("%s: no certificate and key", path)
	case cert.Subject.CommonName != "system:node:"+node:
		return fmt.Errorf("%s: certificate for %q, want system:node:%s", path, cert.Subject.CommonName, node)
	}
	return nil
}

// keySignTime is the median time to generate an ECDSA P-256 key and sign a
// certificate request with it: the agent's own cryptographic work.
func keySignTime(n int) time.Duration {
	ds := make([]time.Duration, n)
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:node-0000", Organization: []string{"system:nodes"}}}
	for i := range ds {
		t0 := time.Now()
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err == nil {
			_, err = x509.CreateCertificateRequest(rand.Reader, tmpl, k)
		}
		if err != nil {
			return 0
		}
		ds[i] = time.Since(t0)
	}
	return benchkit.Pct(ds, 0.5)
}

// stepLog is a slog handler that records when the agent logged each
// message.
type stepLog struct {
	mu  sync.Mutex
	msg []string
	at  []time.Time
}

func (h *stepLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *stepLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *stepLog) WithGroup(string) slog.Handler            { return h }

func (h *stepLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msg = append(h.msg, r.Message)
	h.at = append(h.at, r.Time)
	h.mu.Unlock()
	return nil
}

// steps splits start..end at the first occurrence of each of stepMessages.
func (h *stepLog) steps(start, end time.Time) ([]time.Duration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []time.Duration
	prev := start
	for _, m := range stepMessages {
		i := slices.Index(h.msg, m)
		if i < 0 {
			return nil, errors.New("the agent did not log " + m + "; log: " + fmt.Sprint(h.msg))
		}
		out = append(out, h.at[i].Sub(prev))
		prev = h.at[i]
	}
	return append(out, end.Sub(prev)), nil
}
