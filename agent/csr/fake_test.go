package csr

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodetrust/nodetrust/internal/clock"
)

// fakeAPI is a kube-apiserver-shaped CSR API on an httptest TLS server:
// create, get, and watch by name from a resource version, with knobs to
// make watching fail in the ways real servers and proxies do.
type fakeAPI struct {
	t     *testing.T
	srv   *httptest.Server
	ca    *x509.Certificate
	caKey crypto.Signer

	mu       sync.Mutex
	objs     map[string]*certv1.CertificateSigningRequest
	rv       int
	events   []fakeEvent
	changed  chan struct{} // closed and replaced on every change
	uids     int
	creates  int
	gets     int
	watches  []string // resourceVersion of each watch
	selector []string // fieldSelector of each watch

	// Knobs, set before use.
	watchStatus  int    // answer every watch with this status
	closeWatches int    // end this many watches at once, without events
	goneWatches  int    // answer this many watches with an ERROR 410 event
	createStatus int    // answer creates with this status and message
	createMsg    string // message of createStatus
	token        string // bearer token required, if set
}

type fakeEvent struct {
	rv   int
	typ  string
	name string
	obj  []byte
}

func newFake(t *testing.T) *fakeAPI {
	t.Helper()
	f := &fakeAPI{t: t, objs: map[string]*certv1.CertificateSigningRequest{}, changed: make(chan struct{})}
	f.caKey = newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, f.caKey.Public(), f.caKey)
	if err != nil {
		t.Fatal(err)
	}
	f.ca, _ = x509.ParseCertificate(der)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+csrPath, f.create)
	mux.HandleFunc("GET "+csrPath+"/{name}", f.get)
	mux.HandleFunc("GET "+csrPath, f.watch)
	f.srv = httptest.NewTLSServer(f.auth(mux))
	t.Cleanup(f.srv.Close)
	return f
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// client returns a Client of the fake with a fake clock.
func (f *fakeAPI) client(clk clock.Clock) *Client {
	return &Client{
		Server:       f.srv.URL,
		HTTPClient:   f.srv.Client(),
		Token:        f.token,
		Logger:       testLogger(f.t),
		Clock:        clk,
		WaitTimeout:  15 * time.Minute,
		PollInterval: 2 * time.Second,
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (f *fakeAPI) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
			writeStatus(w, http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "Unauthorized")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg,
	})
}

func writeObject(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// record stores c and logs an event; f.mu is held.
func (f *fakeAPI) recordLocked(typ string, c *certv1.CertificateSigningRequest) {
	f.rv++
	c.ResourceVersion = strconv.Itoa(f.rv)
	b, err := json.Marshal(c)
	if err != nil {
		f.t.Error(err)
	}
	if typ == "DELETED" {
		delete(f.objs, c.Name)
	} else {
		f.objs[c.Name] = c
	}
	f.events = append(f.events, fakeEvent{rv: f.rv, typ: typ, name: c.Name, obj: b})
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeAPI) create(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates++
	if f.createStatus != 0 {
		writeStatus(w, f.createStatus, metav1.StatusReason(http.StatusText(f.createStatus)), f.createMsg)
		return
	}
	var c certv1.CertificateSigningRequest
	if err := json.NewDecoder(r.Body).Decode(&c); err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	if _, ok := f.objs[c.Name]; ok {
		writeStatus(w, http.StatusConflict, metav1.StatusReasonAlreadyExists,
			fmt.Sprintf("certificatesigningrequests.certificates.k8s.io %q already exists", c.Name))
		return
	}
	f.uids++
	c.UID = types.UID(fmt.Sprintf("uid-%d", f.uids))
	c.Spec.Username = "system:bootstrap:abcdef"
	f.recordLocked("ADDED", &c)
	writeObject(w, http.StatusCreated, &c)
}

func (f *fakeAPI) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	c, ok := f.objs[r.PathValue("name")]
	if !ok {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "not found")
		return
	}
	writeObject(w, http.StatusOK, c)
}

func (f *fakeAPI) watch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("watch") != "true" {
		writeStatus(w, http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, "list is not served")
		return
	}
	f.mu.Lock()
	f.watches = append(f.watches, q.Get("resourceVersion"))
	f.selector = append(f.selector, q.Get("fieldSelector"))
	status, closeNow, gone := f.watchStatus, f.closeWatches > 0, f.goneWatches > 0
	if closeNow {
		f.closeWatches--
	} else if gone {
		f.goneWatches--
	}
	f.mu.Unlock()
	if status != 0 {
		writeStatus(w, status, metav1.StatusReason(http.StatusText(status)), "watch is not served here")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	if closeNow {
		return
	}
	enc := json.NewEncoder(w)
	if gone {
		st := metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
			Code: http.StatusGone, Reason: metav1.StatusReasonExpired, Message: "too old resource version"}
		b, _ := json.Marshal(&st)
		enc.Encode(watchEvent{Type: "ERROR", Object: b})
		return
	}
	name, _ := strings.CutPrefix(q.Get("fieldSelector"), "metadata.name=")
	from, _ := strconv.Atoi(q.Get("resourceVersion"))
	for {
		f.mu.Lock()
		var out []fakeEvent
		for _, ev := range f.events {
			if ev.rv > from && (name == "" || ev.name == name) {
				out = append(out, ev)
			}
		}
		if n := len(f.events); n > 0 {
			from = max(from, f.events[n-1].rv)
		}
		changed := f.changed
		f.mu.Unlock()
		for _, ev := range out {
			if err := enc.Encode(watchEvent{Type: ev.typ, Object: ev.obj}); err != nil {
				return
			}
		}
		rc.Flush()
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

// update changes the stored request and sends a MODIFIED event.
func (f *fakeAPI) update(name string, fn func(c *certv1.CertificateSigningRequest)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.objs[name]
	if !ok {
		f.t.Errorf("update: no request %q", name)
		return
	}
	c = c.DeepCopy()
	fn(c)
	f.recordLocked("MODIFIED", c)
}

func cond(t certv1.RequestConditionType, reason, msg string) certv1.CertificateSigningRequestCondition {
	return certv1.CertificateSigningRequestCondition{Type: t, Status: "True", Reason: reason, Message: msg}
}

// approve approves the request and issues its certificate, for the key
// of its spec.request unless pub is given.
func (f *fakeAPI) approve(name string, pub crypto.PublicKey, notAfter time.Time) {
	f.update(name, func(c *certv1.CertificateSigningRequest) {
		c.Status.Conditions = append(c.Status.Conditions, cond(certv1.CertificateApproved, "AutoApproved", "fake"))
		c.Status.Certificate = f.issue(c.Spec.Request, pub, notAfter)
	})
}

func (f *fakeAPI) issue(csrPEM []byte, pub crypto.PublicKey, notAfter time.Time) []byte {
	blk, _ := pem.Decode(csrPEM)
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		f.t.Fatal(err)
	}
	if pub == nil {
		pub = req.PublicKey
	}
	if notAfter.IsZero() {
		notAfter = time.Now().Add(time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: req.Subject,
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca, pub, f.caKey)
	if err != nil {
		f.t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func (f *fakeAPI) remove(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recordLocked("DELETED", f.objs[name].DeepCopy())
}

// seed stores a request as if created earlier by someone else.
func (f *fakeAPI) seed(c *certv1.CertificateSigningRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.uids++
	c.UID = types.UID(fmt.Sprintf("uid-%d", f.uids))
	f.recordLocked("ADDED", c)
}

// waitCreated waits for a request to exist and returns its name.
func (f *fakeAPI) waitCreated() string {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		for n := range f.objs {
			f.mu.Unlock()
			return n
		}
		f.mu.Unlock()
		time.Sleep(time.Millisecond) // waiting on the client's goroutine, not on time
	}
	f.t.Fatal("no request was created")
	return ""
}

// waitWatches waits for at least n watches to have been opened.
func (f *fakeAPI) waitWatches(n int) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		got := len(f.watches)
		f.mu.Unlock()
		if got >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	f.t.Fatalf("fewer than %d watches", n)
}

func (f *fakeAPI) counts() (creates, gets, watches int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.creates, f.gets, len(f.watches)
}

type result struct {
	cert []byte
	err  error
}

// start runs c.Request in a goroutine.
func start(t *testing.T, c *Client, r Request) <-chan result {
	t.Helper()
	ch := make(chan result, 1)
	ctx := t.Context()
	go func() {
		cert, err := c.Request(ctx, r)
		ch <- result{cert, err}
	}()
	return ch
}

// await returns the result of a Request, failing after 10 s.
func await(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		checkNoGoroutines(t)
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Request did not return")
		return result{}
	}
}

// drive advances clk whenever the client sleeps on it (a wait timer as
// well as the WaitTimeout timer) until the Request returns.
func drive(t *testing.T, clk *clock.Fake, step time.Duration, ch <-chan result) result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case r := <-ch:
			checkNoGoroutines(t)
			return r
		default:
		}
		if clk.WaitForWaiters(2, 5*time.Millisecond) {
			clk.Advance(step)
		}
	}
	t.Fatal("Request did not return")
	return result{}
}

// checkNoGoroutines fails if any goroutine runs this package's non-test
// code: once Request has returned, none may.
func checkNoGoroutines(t *testing.T) {
	t.Helper()
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			file, _, ok := strings.Cut(strings.TrimSpace(line), ":")
			if ok && strings.Contains(file, "/agent/csr/") && !strings.HasSuffix(file, "_test.go") {
				t.Errorf("goroutine left behind:\n%s", g)
				break
			}
		}
	}
}

// leakCheck fails the test if it ends with more goroutines than it began
// with, once its servers are closed.
func leakCheck(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines before, %d after:\n%s", before, n, buf[:runtime.Stack(buf, true)])
		}
	})
}
