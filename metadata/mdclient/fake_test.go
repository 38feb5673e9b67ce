package mdclient

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// secret marks values that must never reach a log line or an error.
const secret = "s3cr3t"

// recorded is one request as the fake server saw it.
type recorded struct {
	path   string
	query  url.Values
	flavor string // the request's Metadata-Flavor header
}

// requestLog records requests and lets a test wait for them.
type requestLog struct {
	mu   sync.Mutex
	reqs []recorded
	more chan struct{} // closed and replaced on every request
}

func newRequestLog() *requestLog { return &requestLog{more: make(chan struct{})} }

func (l *requestLog) add(r *http.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reqs = append(l.reqs, recorded{path: r.URL.Path, query: r.URL.Query(), flavor: r.Header.Get(flavorHeader)})
	close(l.more)
	l.more = make(chan struct{})
}

func (l *requestLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.reqs)
}

func (l *requestLog) at(i int) recorded {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reqs[i]
}

// waitFor blocks until at least n requests have arrived, or fails the test
// after two seconds.
func (l *requestLog) waitFor(t testing.TB, n int) {
	t.Helper()
	deadline := time.NewTimer(2 * time.Second)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		got, more := len(l.reqs), l.more
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-more:
		case <-deadline.C:
			t.Fatalf("got %d requests, want at least %d", got, n)
		}
	}
}

// newServer starts an httptest server that records each request and then
// calls h. done is closed when the test ends, before the server closes, so
// that handlers which hang can return.
func newServer(t testing.TB, h func(w http.ResponseWriter, r *http.Request, done <-chan struct{})) (*httptest.Server, *requestLog) {
	t.Helper()
	log := newRequestLog()
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.add(r)
		h(w, r, done)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(done) }) // runs first
	return srv, log
}

// reply writes a metadata-server answer: flavor header, optional ETag,
// status and body.
func reply(w http.ResponseWriter, status int, etag, body string) {
	w.Header().Set(flavorHeader, flavorValue)
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// fakeValue is one watched metadata value with GCE long-poll semantics:
// a wait_for_change request whose last_etag is current hangs until the
// value changes, is deleted, or the request ends.
type fakeValue struct {
	mu      sync.Mutex
	value   string
	etag    string
	defined bool
	changed chan struct{} // closed and replaced on every change
}

func newFakeValue(value, etag string) *fakeValue {
	return &fakeValue{value: value, etag: etag, defined: true, changed: make(chan struct{})}
}

func (f *fakeValue) set(value, etag string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.value, f.etag, f.defined = value, etag, true
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeValue) remove() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.defined = false
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeValue) serve(w http.ResponseWriter, r *http.Request, done <-chan struct{}) {
	if r.Header.Get(flavorHeader) != flavorValue {
		reply(w, http.StatusForbidden, "", "Missing Metadata-Flavor:Google header.")
		return
	}
	wait := r.URL.Query().Get("wait_for_change") == "true"
	last := r.URL.Query().Get("last_etag")
	for {
		f.mu.Lock()
		if !f.defined {
			f.mu.Unlock()
			reply(w, http.StatusNotFound, "", "not found")
			return
		}
		if !wait || last != f.etag {
			value, etag := f.value, f.etag
			f.mu.Unlock()
			reply(w, http.StatusOK, etag, value)
			return
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		case <-done:
			return
		}
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testLogger logs everything, debug included, and fails the test if any
// line ever contains the secret marker.
func testLogger(t testing.TB) *slog.Logger {
	t.Helper()
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if out := buf.String(); strings.Contains(out, secret) {
			t.Errorf("a log line contains a metadata value:\n%s", out)
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testConfig is a Config for a test against srv: fast retries, a logger
// that must never see a value.
func testConfig(t testing.TB, srv *httptest.Server) Config {
	t.Helper()
	return Config{
		Host:         srv.Listener.Addr().String(),
		Logger:       testLogger(t),
		RetryWaitMin: time.Millisecond,
		RetryWaitMax: 4 * time.Millisecond,
	}
}

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
