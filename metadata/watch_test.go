package metadata_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/internal/clock"
	"github.com/nodetrust/nodetrust/metadata"
)

// result is the outcome of a request made in the background.
type result struct {
	code int
	etag string
	body string
	err  error
}

// goGet sends GET target from c in a goroutine. The request is cancelled
// when ctx is or when the test ends, and the test waits for the goroutine.
func (ts *testServer) goGet(t testing.TB, ctx context.Context, c *http.Client, target string) <-chan result {
	t.Helper()
	out := make(chan result, 1)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	wg.Go(func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ts.addr+target, nil)
		if err != nil {
			out <- result{err: err}
			return
		}
		req.Header.Set("Metadata-Flavor", "Google")
		resp, err := c.Do(req)
		if err != nil {
			out <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		out <- result{code: resp.StatusCode, etag: resp.Header.Get("ETag"), body: string(b), err: err}
	})
	return out
}

// await returns the result of a background request, failing after 10s.
func await(t testing.TB, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		require.NoError(t, r.err)
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the long-poll was not answered")
		return result{}
	}
}

// pending fails if ch has a result already.
func pending(t testing.TB, ch <-chan result, why ...string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Errorf("long-poll answered early (%s): code %d, err %v, body %q", strings.Join(why, " "), r.code, r.err, r.body)
	default:
	}
}

func etagOf(t testing.TB, ts *testServer, c *http.Client, target string) (string, string) {
	t.Helper()
	resp, body := ts.get(t, c, target)
	require.Equal(t, 200, resp.StatusCode, target)
	return resp.Header.Get("ETag"), body
}

func withQuery(target, q string) string {
	if strings.Contains(target, "?") {
		return target + "&" + q
	}
	return target + "?" + q
}

func TestWaitForChangeMismatchedETagReturnsAtOnce(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	host, pod := client(t, hostAddr), client(t, podAddr)
	for _, tt := range []struct {
		name   string
		c      *http.Client
		target string
		etag   string
	}{
		{name: "NONE on a leaf", c: host, target: attrs + "cluster-location", etag: "NONE"},
		{name: "NONE on the guest agent's request", c: host, target: v1 + "?recursive=true&alt=json&timeout_sec=60", etag: "NONE"},
		{name: "NONE from a pod", c: pod, target: attrs + "?recursive=true", etag: "NONE"},
		{name: "stale etag", c: host, target: v1 + "instance/name", etag: "0123456789abcdef"},
		{name: "empty etag", c: host, target: v1 + "instance/name", etag: ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wantETag, wantBody := etagOf(t, ts, tt.c, tt.target)
			start := time.Now()
			resp, body := ts.get(t, tt.c, withQuery(tt.target, "wait_for_change=true&last_etag="+url.QueryEscape(tt.etag)))
			assert.Less(t, time.Since(start), 2*time.Second)
			require.Equal(t, 200, resp.StatusCode)
			assert.Equal(t, wantBody, body)
			assert.Equal(t, wantETag, resp.Header.Get("ETag"))
		})
	}
	assert.Equal(t, 0.0, ts.watchers(t))
}

func TestWaitForChangeWakesOnSetData(t *testing.T) {
	for _, tt := range []struct {
		name     string
		target   string
		withETag bool
		want     string // substring of the new body
	}{
		{name: "leaf", target: attrs + "cluster-location", withETag: true, want: "europe-west9"},
		{name: "leaf without last_etag", target: attrs + "cluster-location", want: "europe-west9"},
		{name: "attributes recursive", target: attrs + "?recursive=true", withETag: true, want: `"cluster-location":"europe-west9"`},
		{name: "guest agent request", target: v1 + "?recursive=true&alt=json&timeout_sec=60", withETag: true, want: `"cluster-location":"europe-west9"`},
		{name: "recursive text", target: v1 + "instance/?recursive=true&alt=text", withETag: true, want: "attributes/cluster-location europe-west9\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, metadata.Config{}, loadSample(t))
			c := client(t, hostAddr)
			etag, _ := etagOf(t, ts, c, tt.target)
			q := "wait_for_change=true"
			if tt.withETag {
				q += "&last_etag=" + etag
			}
			ch := ts.goGet(t, context.Background(), c, withQuery(tt.target, q))
			ts.waitWatchers(t, 1)
			pending(t, ch)

			// A reload that changes nothing this waiter sees keeps it waiting.
			other := loadSample(t)
			other.Instances[1].Description = "changed"
			require.NoError(t, ts.srv.SetData(other))
			assert.Equal(t, 1.0, ts.watchers(t))
			pending(t, ch)
			require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "europe-west9")))
			r := await(t, ch)
			assert.Equal(t, 200, r.code)
			assert.Contains(t, r.body, tt.want)
			assert.NotEqual(t, etag, r.etag)
			wantETag, wantBody := etagOf(t, ts, c, tt.target)
			assert.Equal(t, wantETag, r.etag, "the long-poll's ETag is the value's ETag")
			assert.Equal(t, wantBody, r.body)
			assert.Equal(t, 0.0, ts.watchers(t))
			assert.GreaterOrEqual(t, ts.metric(t, "nodetrust_metadata_watch_wakeups_total"), 1.0)
		})
	}
}

func TestWaitForChangeTimeout(t *testing.T) {
	t.Run("fake clock", func(t *testing.T) {
		fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		ts := startServer(t, metadata.Config{Clock: fake}, loadSample(t))
		c := client(t, podAddr)
		target := attrs + "cluster-location"
		etag, body := etagOf(t, ts, c, target)
		require.True(t, fake.WaitForWaiters(1, 5*time.Second), "the sweeper's ticker")
		ch := ts.goGet(t, context.Background(), c, target+"?wait_for_change=true&timeout_sec=30&last_etag="+etag)
		ts.waitWatchers(t, 1)
		fake.Advance(20 * time.Second)
		require.Never(t, func() bool { return len(ch) > 0 }, 100*time.Millisecond, 10*time.Millisecond, "answered before timeout_sec")
		fake.Advance(11 * time.Second)
		r := await(t, ch)
		assert.Equal(t, 200, r.code)
		assert.Equal(t, body, r.body)
		assert.Equal(t, etag, r.etag)
		assert.Equal(t, 0.0, ts.watchers(t))
	})
	t.Run("real clock", func(t *testing.T) {
		ts := startServer(t, metadata.Config{SweepInterval: 20 * time.Millisecond}, loadSample(t))
		c := client(t, hostAddr)
		target := v1 + "instance/?recursive=true"
		etag, body := etagOf(t, ts, c, target)
		start := time.Now()
		resp, got := ts.get(t, c, target+"&wait_for_change=true&timeout_sec=1&last_etag="+etag)
		elapsed := time.Since(start)
		assert.GreaterOrEqual(t, elapsed, time.Second)
		assert.Less(t, elapsed, 5*time.Second)
		assert.Equal(t, 200, resp.StatusCode)
		assert.Equal(t, body, got)
		assert.Equal(t, etag, resp.Header.Get("ETag"))
		assertGCEHeaders(t, resp)
	})
}

// TestWaitForChangeConcealedChange checks that a pod cannot tell that a
// concealed attribute changed: its long-poll keeps waiting and its ETags stay,
// while the host's long-poll on the same path is answered.
func TestWaitForChangeConcealedChange(t *testing.T) {
	for _, target := range []string{
		attrs,
		attrs + "?recursive=true",
		attrs + "?recursive=true&alt=text",
		v1 + "instance/?recursive=true",
		v1 + "instance/?recursive=true&alt=text",
		v1 + "?recursive=true",
		v1 + "?recursive=true&alt=json&timeout_sec=60",
	} {
		t.Run(target, func(t *testing.T) {
			fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			ts := startServer(t, metadata.Config{Clock: fake}, loadSample(t))
			require.True(t, fake.WaitForWaiters(1, 5*time.Second), "the sweeper's ticker")
			host, pod := client(t, hostAddr), client(t, podAddr)
			hostETag, _ := etagOf(t, ts, host, target)
			podETag, podBody := etagOf(t, ts, pod, target)
			require.NotEqual(t, hostETag, podETag)

			hostCh := ts.goGet(t, context.Background(), host, withQuery(target, "wait_for_change=true&last_etag="+hostETag))
			podCh := ts.goGet(t, context.Background(), pod, withQuery(target, "wait_for_change=true&last_etag="+podETag))
			ts.waitWatchers(t, 2)

			// Concealed values change and a concealed key appears.
			d := withAttr(loadSample(t), "kube-env", "KUBELET_CERT: rotated\n")
			d = withAttr(d, "nodetrust-bootstrap-token", "zzzzzz.rotatedrotated")
			d = withAttr(d, "nodetrust-bootstrap-cert", "-----BEGIN CERTIFICATE-----")
			require.NoError(t, ts.srv.SetData(d))

			r := await(t, hostCh)
			assert.Equal(t, 200, r.code)
			assert.NotEqual(t, hostETag, r.etag, "the host saw the change")

			// SetData answers synchronously: the pod is still waiting.
			assert.Equal(t, 1.0, ts.watchers(t), "the pod's long-poll was woken by a concealed change")
			pending(t, podCh)
			e, b := etagOf(t, ts, pod, target)
			assert.Equal(t, podETag, e, "the pod's ETag changed with a concealed value")
			assert.Equal(t, podBody, b)

			fake.Advance(2 * metadata.MaxTimeout)
			r = await(t, podCh)
			assert.Equal(t, 200, r.code)
			assert.Equal(t, podETag, r.etag)
			assert.Equal(t, podBody, r.body)
			assert.Empty(t, leaks(r.body))
		})
	}
}

func TestWaitForChangePerCallerCap(t *testing.T) {
	ts := startServer(t, metadata.Config{MaxWatchersPerCaller: 2}, loadSample(t))
	pod, pod2 := client(t, podAddr), client(t, "127.0.1.8")
	target := attrs + "cluster-location?wait_for_change=true"

	a := ts.goGet(t, context.Background(), pod, target)
	b := ts.goGet(t, context.Background(), pod, target+"&timeout_sec=3600")
	ts.waitWatchers(t, 2)

	resp, body := ts.get(t, pod, target)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode, body)
	assertGCEHeaders(t, resp)
	assert.Equal(t, 1.0, ts.metric(t, "nodetrust_metadata_denied_total", "reason", "too_many_watchers"))

	// Another caller has its own allowance.
	c := ts.goGet(t, context.Background(), pod2, target)
	ts.waitWatchers(t, 3)

	// A request that need not wait is not limited.
	resp, _ = ts.get(t, pod, target+"&last_etag=NONE")
	assert.Equal(t, 200, resp.StatusCode)

	require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "elsewhere")))
	for _, ch := range []<-chan result{a, b, c} {
		r := await(t, ch)
		assert.Equal(t, "elsewhere", r.body)
	}
	assert.Equal(t, 0.0, ts.watchers(t))

	// The places are given back.
	d := ts.goGet(t, context.Background(), pod, target)
	e := ts.goGet(t, context.Background(), pod, target)
	ts.waitWatchers(t, 2)
	require.NoError(t, ts.srv.SetData(loadSample(t)))
	await(t, d)
	await(t, e)
}

func TestWaitForChangeTotalCap(t *testing.T) {
	ts := startServer(t, metadata.Config{MaxWatchers: 1}, loadSample(t))
	target := attrs + "cluster-location?wait_for_change=true"
	a := ts.goGet(t, context.Background(), client(t, podAddr), target)
	ts.waitWatchers(t, 1)
	resp, _ := ts.get(t, client(t, hostAddr), target)
	assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "x")))
	await(t, a)
}

func TestWaitForChangeClientGone(t *testing.T) {
	// Default SweepInterval: abandoned long-polls are found within a second.
	ts := startServer(t, metadata.Config{}, loadSample(t))
	c := client(t, podAddr)
	ctx, cancel := context.WithCancel(context.Background())
	var chs []<-chan result
	for range 3 {
		chs = append(chs, ts.goGet(t, ctx, c, attrs+"?recursive=true&wait_for_change=true"))
	}
	ts.waitWatchers(t, 3)
	cancel()
	for _, ch := range chs {
		r := <-ch
		require.ErrorIs(t, r.err, context.Canceled)
	}
	require.Eventually(t, func() bool { return ts.watchers(t) == 0 }, 3*time.Second, 20*time.Millisecond,
		"abandoned long-polls still counted")

	// The caller's allowance is back in full.
	ts2 := startServer(t, metadata.Config{MaxWatchersPerCaller: 1}, loadSample(t))
	ctx2, cancel2 := context.WithCancel(context.Background())
	ch := ts2.goGet(t, ctx2, c, attrs+"?wait_for_change=true")
	ts2.waitWatchers(t, 1)
	cancel2()
	<-ch
	ts2.waitWatchers(t, 0)
	ch = ts2.goGet(t, context.Background(), c, attrs+"cluster-location?wait_for_change=true")
	ts2.waitWatchers(t, 1)
	require.NoError(t, ts2.srv.SetData(withAttr(loadSample(t), "cluster-location", "x")))
	assert.Equal(t, 200, await(t, ch).code)
}

// TestWaitForChangeShutdown checks that Run answers waiting long-polls when
// it stops.
func TestWaitForChangeShutdown(t *testing.T) {
	ts, stop := runServer(t, metadata.Config{}, loadSample(t))
	c := client(t, hostAddr)
	etag, body := etagOf(t, ts, c, attrs+"cluster-location")
	ch := ts.goGet(t, context.Background(), c, attrs+"cluster-location?wait_for_change=true&last_etag="+etag)
	ts.waitWatchers(t, 1)
	stop()
	r := await(t, ch)
	assert.Equal(t, 200, r.code)
	assert.Equal(t, body, r.body)
	assert.Equal(t, etag, r.etag)
	assert.Equal(t, 0.0, ts.watchers(t))
}

// recorder is a ResponseWriter without http.Hijacker, as on HTTP/2: the
// long-poll waits in the handler.
type recorder struct {
	mu   sync.Mutex
	rec  *httptest.ResponseRecorder
	hdr  http.Header
	code int
}

func newRecorder() *recorder { return &recorder{rec: httptest.NewRecorder(), hdr: http.Header{}} }

func (r *recorder) Header() http.Header { return r.hdr }
func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec.Write(b)
}
func (r *recorder) WriteHeader(code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.code = code
}

var _ http.ResponseWriter = (*recorder)(nil)

// serveInHandler runs srv.ServeHTTP for target from remote in a goroutine.
func serveInHandler(t *testing.T, ctx context.Context, srv http.Handler, remote, target string) (*recorder, <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	req.Host = "metadata.google.internal"
	req.RemoteAddr = remote
	req.Header.Set("Metadata-Flavor", "Google")
	w := newRecorder()
	_, isHJ := any(w).(http.Hijacker)
	require.False(t, isHJ)
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	wg.Go(func() {
		defer close(done)
		srv.ServeHTTP(w, req)
	})
	return w, done
}

func waitDone(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeHTTP did not return")
	}
}

func TestWaitInHandler(t *testing.T) {
	target := attrs + "cluster-location"
	t.Run("woken by SetData", func(t *testing.T) {
		ts := startServer(t, metadata.Config{}, loadSample(t))
		etag, _ := etagOf(t, ts, client(t, hostAddr), target)
		w, done := serveInHandler(t, context.Background(), ts.srv, "127.0.0.1:40000", target+"?wait_for_change=true&last_etag="+etag)
		ts.waitWatchers(t, 1)
		require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "moved")))
		waitDone(t, done)
		assert.Equal(t, 200, w.code)
		assert.Equal(t, "moved", w.rec.Body.String())
		assert.NotEqual(t, etag, w.hdr.Get("ETag"))
		assert.Equal(t, "Google", w.hdr.Get("Metadata-Flavor"))
		assert.Equal(t, 0.0, ts.watchers(t))
	})
	t.Run("pod not woken by a concealed change", func(t *testing.T) {
		fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		ts := startServer(t, metadata.Config{Clock: fake}, loadSample(t))
		require.True(t, fake.WaitForWaiters(1, 5*time.Second), "the sweeper's ticker")
		etag, body := etagOf(t, ts, client(t, podAddr), attrs+"?recursive=true")
		w, done := serveInHandler(t, context.Background(), ts.srv, "127.0.1.9:40000", attrs+"?recursive=true&wait_for_change=true&timeout_sec=5&last_etag="+etag)
		ts.waitWatchers(t, 1)
		require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "kube-env", "rotated")))
		assert.Equal(t, 1.0, ts.watchers(t))
		fake.Advance(6 * time.Second)
		waitDone(t, done)
		assert.Equal(t, 200, w.code)
		assert.Equal(t, body, w.rec.Body.String())
		assert.Equal(t, etag, w.hdr.Get("ETag"))
	})
	t.Run("client gone", func(t *testing.T) {
		ts := startServer(t, metadata.Config{}, loadSample(t))
		ctx, cancel := context.WithCancel(context.Background())
		_, done := serveInHandler(t, ctx, ts.srv, "127.0.1.7:40000", target+"?wait_for_change=true")
		ts.waitWatchers(t, 1)
		cancel()
		waitDone(t, done)
		assert.Equal(t, 0.0, ts.watchers(t))
	})
	t.Run("cap", func(t *testing.T) {
		ts := startServer(t, metadata.Config{MaxWatchersPerCaller: 1}, loadSample(t))
		_, done := serveInHandler(t, context.Background(), ts.srv, "127.0.1.7:40000", target+"?wait_for_change=true")
		ts.waitWatchers(t, 1)
		w2, done2 := serveInHandler(t, context.Background(), ts.srv, "127.0.1.7:40001", target+"?wait_for_change=true")
		waitDone(t, done2)
		assert.Equal(t, http.StatusTooManyRequests, w2.code)
		require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "moved")))
		waitDone(t, done)
	})
}

// TestWaitForChangeRouteGroups: long-polls of one caller on "/" and on
// "/computeMetadata/v1/" (both have no segments below v1) must each get
// their own answer.
func TestWaitForChangeRouteGroups(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	c := client(t, hostAddr)
	rootCh := ts.goGet(t, context.Background(), c, "/?recursive=true&alt=json&wait_for_change=true")
	ts.waitWatchers(t, 1)
	etag, _ := etagOf(t, ts, c, v1+"?recursive=true&alt=json")
	v1Ch := ts.goGet(t, context.Background(), c, v1+"?recursive=true&alt=json&wait_for_change=true&last_etag="+etag)
	ts.waitWatchers(t, 2)

	require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "europe-west9")))
	r := await(t, v1Ch)
	assert.Equal(t, 200, r.code)
	assert.Contains(t, r.body, `"cluster-location":"europe-west9"`, "the v1 long-poll got another request's answer")
	pending(t, rootCh, "the root listing did not change")
	require.NoError(t, ts.srv.SetData(loadSample(t)))
}

// writeFile replaces path atomically, as editors and config management do.
func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, b, 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

func sampleWith(t testing.TB, old, new string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/sample.yaml")
	require.NoError(t, err)
	require.Contains(t, string(b), old)
	return []byte(strings.Replace(string(b), old, new, 1))
}

// reloadSetup copies the sample to a temporary file and serves it.
func reloadSetup(t *testing.T, cfg metadata.Config) (*testServer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data.yaml")
	writeFile(t, path, sampleWith(t, "", ""))
	d, err := metadata.LoadFile(path)
	require.NoError(t, err)
	return startServer(t, cfg, d), path
}

func runReloader(t *testing.T, r *metadata.Reloader) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
}

var (
	badTypo = func(t testing.TB) []byte {
		return sampleWith(t, "hostAddresses: [127.0.0.2]", "hostAdresses: [127.0.0.2]")
	}
	badValid = func(t testing.TB) []byte {
		return sampleWith(t, "podRanges: [127.0.2.0/24]", "podRanges: [127.0.1.0/24]")
	}
	moved = func(t testing.TB) []byte {
		return sampleWith(t, "cluster-location: europe-west1", "cluster-location: europe-west4")
	}
)

func TestReloadSignal(t *testing.T) {
	ts, path := reloadSetup(t, metadata.Config{})
	c := client(t, hostAddr)
	r := &metadata.Reloader{Path: path, Server: ts.srv}
	log := slog.New(slog.DiscardHandler)
	target := attrs + "cluster-location"

	for _, bad := range [][]byte{badTypo(t), badValid(t), []byte(""), []byte("{{{")} {
		writeFile(t, path, bad)
		assert.False(t, r.Reload(log, "test"))
		_, body := ts.get(t, c, target)
		assert.Equal(t, "europe-west1", body, "the last good data keeps serving")
	}
	assert.Equal(t, 4.0, ts.metric(t, "nodetrust_metadata_reloads_total", "result", "error"))
	require.NoError(t, os.Remove(path))
	assert.False(t, r.Reload(log, "test"), "a missing file keeps the data")
	_, body := ts.get(t, c, target)
	assert.Equal(t, "europe-west1", body)

	writeFile(t, path, moved(t))
	assert.True(t, r.Reload(log, "test"))
	_, body = ts.get(t, c, target)
	assert.Equal(t, "europe-west4", body)
	assert.Equal(t, 1.0, ts.metric(t, "nodetrust_metadata_reloads_total", "result", "ok"))
	assert.Equal(t, 2.0, ts.metric(t, "nodetrust_metadata_data_generation"))

	assert.False(t, r.Reload(log, "test"), "same content again")
	assert.Equal(t, 1.0, ts.metric(t, "nodetrust_metadata_reloads_total", "result", "unchanged"))
	assert.Equal(t, 2.0, ts.metric(t, "nodetrust_metadata_data_generation"))
}

func TestReloadTrigger(t *testing.T) {
	ts, path := reloadSetup(t, metadata.Config{})
	c := client(t, hostAddr)
	trigger := make(chan struct{})
	runReloader(t, &metadata.Reloader{Path: path, Server: ts.srv, Trigger: trigger, Interval: time.Hour, Loaded: sampleWith(t, "", "")})
	trigger <- struct{}{} // received once Run has read the file
	writeFile(t, path, moved(t))
	trigger <- struct{}{}
	require.Eventually(t, func() bool {
		_, body := ts.get(t, c, attrs+"cluster-location")
		return body == "europe-west4"
	}, 5*time.Second, 10*time.Millisecond)
}

// TestReloadRun polls the file with the real clock.
func TestReloadRun(t *testing.T) {
	ts, path := reloadSetup(t, metadata.Config{})
	c := client(t, hostAddr)
	trigger := make(chan struct{})
	runReloader(t, &metadata.Reloader{Path: path, Server: ts.srv, Trigger: trigger, Interval: 5 * time.Millisecond, Loaded: sampleWith(t, "", "")})
	trigger <- struct{}{} // received once Run has read the file

	writeFile(t, path, badValid(t))
	require.Eventually(t, func() bool {
		return ts.metric(t, "nodetrust_metadata_reloads_total", "result", "error") >= 1
	}, 5*time.Second, 5*time.Millisecond)
	_, body := ts.get(t, c, attrs+"cluster-location")
	assert.Equal(t, "europe-west1", body)

	require.NoError(t, os.Remove(path))
	require.Eventually(t, func() bool {
		return ts.metric(t, "nodetrust_metadata_reloads_total", "result", "error") >= 2
	}, 5*time.Second, 5*time.Millisecond, "a vanished file is reported")
	_, body = ts.get(t, c, attrs+"cluster-location")
	assert.Equal(t, "europe-west1", body)

	writeFile(t, path, moved(t))
	require.Eventually(t, func() bool {
		_, body := ts.get(t, c, attrs+"cluster-location")
		return body == "europe-west4"
	}, 5*time.Second, 5*time.Millisecond)
	// The counter moves just after the new data is served.
	require.Eventually(t, func() bool {
		return ts.metric(t, "nodetrust_metadata_reloads_total", "result", "ok") >= 1
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1.0, ts.metric(t, "nodetrust_metadata_reloads_total", "result", "ok"))
}

func TestReloadFileChange(t *testing.T) {
	ts, path := reloadSetup(t, metadata.Config{})
	host, pod := client(t, hostAddr), client(t, podAddr)
	target := attrs + "cluster-location"
	etag, _ := etagOf(t, ts, host, target)
	hostCh := ts.goGet(t, context.Background(), host, target+"?wait_for_change=true&last_etag="+etag)
	podETag, _ := etagOf(t, ts, pod, attrs+"?recursive=true")
	podCh := ts.goGet(t, context.Background(), pod, attrs+"?recursive=true&wait_for_change=true&timeout_sec=3600&last_etag="+podETag)
	ts.waitWatchers(t, 2)

	// The Reloader's ticker runs on a fake clock so that the test knows
	// when Run has taken its first look at the file.
	fake := clock.NewFake(time.Now())
	runReloader(t, &metadata.Reloader{Path: path, Server: ts.srv, Interval: 10 * time.Millisecond, Clock: fake, Loaded: sampleWith(t, "", "")})
	require.True(t, fake.WaitForWaiters(1, 5*time.Second))
	tick := func() { fake.Advance(10 * time.Millisecond) }

	// A bad file is refused; the old data serves and the long-polls wait.
	writeFile(t, path, badTypo(t))
	require.Eventually(t, func() bool {
		tick()
		return ts.metric(t, "nodetrust_metadata_reloads_total", "result", "error") >= 1
	}, 5*time.Second, 10*time.Millisecond)
	_, body := ts.get(t, host, target)
	assert.Equal(t, "europe-west1", body)
	assert.Equal(t, 2.0, ts.watchers(t))
	pending(t, hostCh)

	// A concealed change wakes the host's waiters only.
	writeFile(t, path, sampleWith(t, "nodetrust-bootstrap-token: abcdef.0123456789abcdef", "nodetrust-bootstrap-token: qqqqqq.qqqqqqqqqqqqqqqq"))
	require.Eventually(t, func() bool {
		tick()
		return ts.metric(t, "nodetrust_metadata_data_generation") == 2
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, 2.0, ts.watchers(t), "nothing the waiters see changed")

	// A good file is picked up and wakes the host's long-poll.
	writeFile(t, path, sampleWith(t, "cluster-location: europe-west1", "cluster-location: europe-west4"))
	require.Eventually(t, func() bool {
		tick()
		return len(hostCh) > 0
	}, 5*time.Second, 10*time.Millisecond)
	r := await(t, hostCh)
	assert.Equal(t, "europe-west4", r.body)
	r = await(t, podCh)
	assert.Contains(t, r.body, `"cluster-location":"europe-west4"`)
	assert.Empty(t, leaks(r.body))
	_, body = ts.get(t, pod, target)
	assert.Equal(t, "europe-west4", body)
}

// TestReloadTriggerAfterEarlyEdit: the file changes after the server loaded
// it but before the Reloader starts (cmd/nodetrust loads, listens, then runs
// the Reloader). A SIGHUP must still bring the file's content in.
func TestReloadTriggerAfterEarlyEdit(t *testing.T) {
	ts, path := reloadSetup(t, metadata.Config{})
	c := client(t, hostAddr)
	writeFile(t, path, moved(t))
	trigger := make(chan struct{})
	runReloader(t, &metadata.Reloader{Path: path, Server: ts.srv, Trigger: trigger, Interval: time.Hour, Loaded: sampleWith(t, "", "")})
	trigger <- struct{}{}
	require.Eventually(t, func() bool {
		return ts.metric(t, "nodetrust_metadata_reloads_total") >= 1
	}, 5*time.Second, 10*time.Millisecond)
	_, body := ts.get(t, c, attrs+"cluster-location")
	assert.Equal(t, "europe-west4", body, "SIGHUP did not load the file the server has never served (reloads: ok=%v unchanged=%v)",
		ts.metric(t, "nodetrust_metadata_reloads_total", "result", "ok"),
		ts.metric(t, "nodetrust_metadata_reloads_total", "result", "unchanged"))
}

// TestWaitForChangeAnswerWithFakeClock: the server's Clock drives long-poll
// timeouts only; answering a parked long-poll must not depend on the fake
// time being close to the wall clock (socket deadlines are wall-clock).
func TestWaitForChangeAnswerWithFakeClock(t *testing.T) {
	fake := clock.NewFake(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	ts := startServer(t, metadata.Config{Clock: fake}, loadSample(t))
	etag, _ := etagOf(t, ts, client(t, hostAddr), attrs+"cluster-location")
	out := make(chan result, 1)
	go func() {
		var r result
		defer func() { out <- r }()
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(hostAddr)}}
		conn, err := d.Dial("tcp", ts.addr)
		if r.err = err; err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, r.err = io.WriteString(conn, rawRequest("GET", attrs+"cluster-location?wait_for_change=true&last_etag="+etag)); r.err != nil {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if r.err = err; err != nil {
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		r.code, r.etag, r.body, r.err = resp.StatusCode, resp.Header.Get("ETag"), string(b), err
	}()
	ts.waitWatchers(t, 1)
	require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "moved")))
	r := <-out
	require.NoError(t, r.err, "the answer to the long-poll was not delivered")
	assert.Equal(t, 200, r.code)
	assert.Equal(t, "moved", r.body)
}
