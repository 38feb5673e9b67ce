// Command controlplanebench measures nodetrust's control plane on this
// machine, in one run: CSRs issued per second end to end (create with a
// bootstrap token, auto-approve, sign in the signer, watched until issued)
// with 200 concurrent client-go clients, next to the raw ECDSA P-256
// signing rate; and a 10,000-node bootstrap storm's duration and failures.
//
//	go run ./test/bench/controlplanebench
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/store"
)

func main() {
	clients := flag.Int("clients", 200, "concurrent clients for the throughput run")
	total := flag.Int("csrs", 20000, "CSRs in the throughput run")
	storm := flag.Int("storm", 10000, "nodes in the bootstrap storm")
	conns := flag.Int("conns", 50, "TLS connections the storm's nodes share (both ends live in this process; the open-files limit caps it)")
	rawFor := flag.Duration("raw", 3*time.Second, "how long to measure raw signing")
	flag.IntVar(&workers, "workers", 0, "approver workers (0: the server default)")
	verbose := flag.Bool("v", false, "log the control plane's warnings and errors to stderr")
	flag.StringVar(&profPath, "cpuprofile", "", "write CPU profiles of the timed windows to FILE (throughput) and FILE.storm; samples carry the label side=api|signer|client")
	flag.Parse()
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if err := run(*clients, *total, *storm, *conns, *rawFor); err != nil {
		fmt.Fprintln(os.Stderr, "controlplanebench:", err)
		os.Exit(1)
	}
}

var (
	workers  int
	logger   *slog.Logger
	profPath string
)

// startProfile starts a CPU profile into path when profiling was asked
// for, and returns the function that stops it.
func startProfile(path string) func() {
	if profPath == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplanebench:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "controlplanebench:", err)
		f.Close()
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// side runs fn with the pprof label side=name, which every goroutine it
// starts inherits, so that profiles split into API, signer and clients.
func side(name string, fn func()) {
	pprof.Do(context.Background(), pprof.Labels("side", name), func(context.Context) { fn() })
}

// countingListener counts accepted connections (each a TLS handshake).
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

type bench struct {
	addr  string
	caPEM []byte
	token string
	ln    *countingListener
	store *store.Store
}

func run(clients, total, storm, conns int, rawFor time.Duration) error {
	fmt.Printf("machine: %d CPUs, GOMAXPROCS %d, %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	raw := rawSignRate(rawFor)
	fmt.Printf("raw ECDSA P-256 signing (crypto/ecdsa.SignASN1, all cores): %.0f signatures/s\n", raw)

	b, stop, err := start()
	if err != nil {
		return err
	}
	defer stop()

	fmt.Printf("preparing %d CSRs (client-side key generation is not timed)...\n", total+storm)
	reqs, err := makeCSRs(total + storm)
	if err != nil {
		return err
	}
	certs := make([]*x509.Certificate, total+storm)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(b.caPEM)

	// Throughput: clients workers, each with its own client-go clientset.
	var next atomic.Int64
	var fails atomic.Int64
	var firstErr error
	var errOnce sync.Once
	cs := make([]kubernetes.Interface, clients)
	for i := range cs {
		cs[i] = b.clientset(i % 8)
	}
	accepted, st0 := b.ln.n.Load(), b.store.Stats()
	stopProf := startProfile(profPath)
	cpu0 := readCPU()
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", "client")))
			for {
				n := int(next.Add(1)) - 1
				if n >= total {
					return
				}
				var err error
				if certs[n], err = issue(cs[i], fmt.Sprintf("tput-%d", n), reqs[n]); err != nil {
					fails.Add(1)
					errOnce.Do(func() { firstErr = err })
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(t0)
	cpu := readCPU().since(cpu0, el)
	stopProf()
	rate := float64(total-int(fails.Load())) / el.Seconds()
	fmt.Printf("end to end with %d concurrent clients: %d CSRs in %v = %.0f CSRs/s issued (%d failures, %d API connections opened)\n", clients, total, el.Round(time.Millisecond), rate, fails.Load(), b.ln.n.Load()-accepted)
	fmt.Printf("  CPUs used meanwhile: this process %.2f (%.2f ms per CSR), other processes %.2f\n", cpu.self, 1000*cpu.self*el.Seconds()/float64(total), cpu.other)
	printStore(b.store.Stats(), st0, el)
	fmt.Printf("ratio end-to-end / raw signing: %.3f (%.1f%%)\n", rate/raw, 100*rate/raw)
	if firstErr != nil {
		fmt.Printf("first failure: %v\n", firstErr)
	}
	verifyAll(certs[:total], roots)

	// Storm: every node at once.
	fails.Store(0)
	firstErr = nil
	errOnce = sync.Once{}
	scs := make([]kubernetes.Interface, conns)
	for i := range scs {
		scs[i] = b.clientset(100 + i)
	}
	accepted, st0 = b.ln.n.Load(), b.store.Stats()
	stopProf = startProfile(profPath + ".storm")
	cpu0 = readCPU()
	t0 = time.Now()
	for i := range storm {
		wg.Go(func() {
			pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", "client")))
			var err error
			if certs[total+i], err = issue(scs[i%conns], fmt.Sprintf("storm-node-%d", i), reqs[total+i]); err != nil {
				fails.Add(1)
				errOnce.Do(func() { firstErr = err })
			}
		})
	}
	wg.Wait()
	el = time.Since(t0)
	cpu = readCPU().since(cpu0, el)
	stopProf()
	fmt.Printf("bootstrap storm: %d nodes at once over %d connections: done in %v (%.0f CSRs/s), %d failures, %d API connections opened\n", storm, conns, el.Round(time.Millisecond), float64(storm)/el.Seconds(), fails.Load(), b.ln.n.Load()-accepted)
	fmt.Printf("  CPUs used meanwhile: this process %.2f, other processes %.2f\n", cpu.self, cpu.other)
	printStore(b.store.Stats(), st0, el)
	if !verifyAll(certs[total:], roots) {
		return errors.New("storm issued certificates that do not verify")
	}
	if firstErr != nil {
		fmt.Printf("first failure: %v\n", firstErr)
		return errors.New("storm had failures")
	}
	return nil
}

// printStore prints the store's group commit over a window.
func printStore(st, st0 store.Stats, el time.Duration) {
	syncs, recs := st.Syncs-st0.Syncs, st.Records-st0.Records
	fmt.Printf("  store: %d records in %d fsyncs (%.0f fsyncs/s, %.1f records each)\n", recs, syncs, float64(syncs)/el.Seconds(), float64(recs)/float64(max(syncs, 1)))
}

// cpuTimes are CPU seconds used so far by this process and by the whole
// machine, from /proc (zero where it cannot be read).
type cpuTimes struct{ self, all float64 }

// cpuUse is CPUs used over a window: by this process, by everything else.
type cpuUse struct{ self, other float64 }

func readCPU() cpuTimes {
	const tick = 100.0 // USER_HZ
	var t cpuTimes
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		// Fields after the command's closing parenthesis; utime and stime
		// are the 14th and 15th fields of the line.
		if i := bytes.LastIndexByte(b, ')'); i > 0 {
			f := strings.Fields(string(b[i+1:]))
			if len(f) > 12 {
				u, _ := strconv.ParseFloat(f[11], 64)
				s, _ := strconv.ParseFloat(f[12], 64)
				t.self = (u + s) / tick
			}
		}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		for i, v := range f[1:] {
			n, _ := strconv.ParseFloat(v, 64)
			if i != 3 && i != 4 && i < 8 { // all but idle and iowait; guest time is in user
				t.all += n / tick
			}
		}
	}
	return t
}

func (t cpuTimes) since(t0 cpuTimes, el time.Duration) cpuUse {
	self := (t.self - t0.self) / el.Seconds()
	return cpuUse{self: self, other: max(0, (t.all-t0.all)/el.Seconds()-self)}
}

// rawSignRate signs SHA-256 digests with one P-256 key per core for d.
func rawSignRate(d time.Duration) float64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			key, _ := pki.GenerateKey()
			digest := sha256.Sum256([]byte("nodetrust"))
			for time.Now().Before(deadline) {
				for range 64 {
					ecdsa.SignASN1(rand.Reader, key, digest[:])
				}
				n.Add(64)
			}
		})
	}
	t0 := time.Now()
	wg.Wait()
	return float64(n.Load()) / time.Since(t0).Seconds()
}

// nodeReq is one node's certificate request and what its certificate
// must hold.
type nodeReq struct {
	pem []byte
	cn  string
	pub crypto.PublicKey
}

// makeCSRs makes n nodes' keys and requests, as the nodes would on their
// own CPUs before they ask.
func makeCSRs(n int) ([]nodeReq, error) {
	out := make([]nodeReq, n)
	var wg sync.WaitGroup
	var first error
	var mu sync.Mutex
	per := (n + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	for w := 0; w*per < n; w++ {
		wg.Go(func() {
			for i := w * per; i < min(n, (w+1)*per); i++ {
				key, err := pki.GenerateKey()
				if err == nil {
					out[i].cn, out[i].pub = fmt.Sprintf("system:node:node-%d", i), key.Public()
					out[i].pem, err = pki.NewCSR(key, out[i].cn, []string{"system:nodes"}, nil, nil)
				}
				if err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return out, first
}

// verifyAll checks every certificate a client got against the cluster CA
// for client authentication, after the timed window (a node does this on
// its own CPU), and reports whether all of them verify.
func verifyAll(certs []*x509.Certificate, roots *x509.CertPool) bool {
	var bad, missing atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	per := (len(certs) + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	for w := 0; w*per < len(certs); w++ {
		wg.Go(func() {
			for _, c := range certs[w*per : min(len(certs), (w+1)*per)] {
				if c == nil {
					missing.Add(1)
					continue
				}
				if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					bad.Add(1)
					first.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	wg.Wait()
	n := int64(len(certs)) - missing.Load()
	fmt.Printf("  certificates verified against the cluster CA afterwards (not timed): %d of %d good", n-bad.Load(), n)
	if bad.Load() > 0 {
		fmt.Printf("; first bad: %v", first.Load())
	}
	fmt.Println()
	return bad.Load() == 0
}

func start() (*bench, func(), error) {
	dir, err := os.MkdirTemp("", "ntbench")
	if err != nil {
		return nil, nil, err
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	ln := &countingListener{Listener: tcp}
	addr := ln.Addr().String()
	if err := controlplane.Init(controlplane.InitOptions{DataDir: dir, Server: "https://" + addr}); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		side("signer", func() {
			if err := controlplane.RunSigner(ctx, controlplane.SignerConfig{DataDir: dir}); err != nil {
				fmt.Fprintln(os.Stderr, "signer:", err)
			}
		})
	})
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(controlplane.Paths{DataDir: dir}.SignerSocket()); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv, err := controlplane.NewServer(controlplane.Config{DataDir: dir, Workers: workers, Logger: logger})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	tok, _, err := srv.Tokens.Create(time.Hour, "bench", nil)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	wg.Go(func() {
		side("api", func() {
			if err := srv.Run(ctx, ln); err != nil {
				fmt.Fprintln(os.Stderr, "server:", err)
			}
		})
	})
	caPEM, _ := os.ReadFile(controlplane.Paths{DataDir: dir}.CACert())
	stop := func() {
		cancel()
		wg.Wait()
		os.RemoveAll(dir)
	}
	return &bench{addr: addr, caPEM: caPEM, token: tok, ln: ln, store: srv.Store}, stop, nil
}

// clientset returns a client-go clientset; different conn values get
// separate transports (client-go shares one per identical config, so the
// user agent tells them apart).
func (b *bench) clientset(conn int) kubernetes.Interface {
	cfg := &rest.Config{
		Host:            "https://" + b.addr,
		BearerToken:     b.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: b.caPEM, ServerName: fmt.Sprintf("localhost")},
		UserAgent:       fmt.Sprintf("controlplanebench/%d", conn),
		QPS:             -1, // no client-side rate limit
		Timeout:         5 * time.Minute,
	}
	cfg.Proxy = nil
	cfg.WrapTransport = nil
	cfg.Dial = (&net.Dialer{}).DialContext
	return kubernetes.NewForConfigOrDie(cfg)
}

// issue creates a kubelet client CSR and watches it until it is issued,
// and checks that the certificate is for the node's name and key.
func issue(cs kubernetes.Interface, name string, r nodeReq) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	api := cs.CertificatesV1().CertificateSigningRequests()
	c, err := api.Create(ctx, &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certv1.CertificateSigningRequestSpec{Request: r.pem, SignerName: csrpolicy.SignerKubeletClient,
			Usages: []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	w, err := api.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String(), ResourceVersion: c.ResourceVersion})
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", name, err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			return nil, fmt.Errorf("watch %s: error event %v", name, ev.Object)
		}
		got, ok := ev.Object.(*certv1.CertificateSigningRequest)
		if !ok {
			continue
		}
		switch csrpolicy.StateOf(got.Status) {
		case csrpolicy.Issued:
			certs, err := pki.ParseCerts(got.Status.Certificate)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			cert := certs[0]
			if cert.Subject.CommonName != r.cn || !r.pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
				return nil, fmt.Errorf("%s: certificate for %q with another key, want %q", name, cert.Subject.CommonName, r.cn)
			}
			return cert, nil
		case csrpolicy.Denied, csrpolicy.Failed:
			return nil, fmt.Errorf("%s: %+v", name, got.Status.Conditions)
		}
	}
	return nil, fmt.Errorf("watch %s ended before the certificate was issued: %v", name, ctx.Err())
}
