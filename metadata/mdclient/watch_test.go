package mdclient

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodetrust/nodetrust/internal/clock"
)

const watchPath = "instance/attributes/nodetrust-token"

type delivery struct{ value, etag string }

// deliveries collects Watch callbacks.
type deliveries struct {
	n  atomic.Int32
	ch chan delivery
}

func newDeliveries() *deliveries { return &deliveries{ch: make(chan delivery, 64)} }

func (d *deliveries) fn(value, etag string) error {
	d.n.Add(1)
	d.ch <- delivery{value, etag}
	return nil
}

func (d *deliveries) expect(t *testing.T, want delivery) {
	t.Helper()
	select {
	case got := <-d.ch:
		if got != want {
			t.Fatalf("callback got (%.20q, %q), want (%.20q, %q)", got.value, got.etag, want.value, want.etag)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("no callback, want (%.20q, %q)", want.value, want.etag)
	}
}

// running is a Watch running on its own goroutine.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// startWatch runs c.Watch(watchPath, fn) until the test ends.
func startWatch(t *testing.T, c *Client, fn func(value, etag string) error) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = c.Watch(ctx, watchPath, fn)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(2 * time.Second):
			t.Error("Watch did not return after cancel")
		}
	})
	return r
}

// wait returns Watch's error, failing the test if Watch runs on for long.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not return")
		return nil
	}
}

func TestWatchDeliversChanges(t *testing.T) {
	// An ETag full of query syntax must come back intact as last_etag.
	const etag1 = "e1&timeout_sec=0&last_etag=x y"
	fv := newFakeValue(secret+"-1", etag1)
	srv, log := newServer(t, fv.serve)
	c := New(testConfig(t, srv))
	d := newDeliveries()
	startWatch(t, c, d.fn)

	d.expect(t, delivery{secret + "-1", etag1})
	log.waitFor(t, 2) // the first long poll is hanging
	fv.set(secret+"-2", "e2")
	d.expect(t, delivery{secret + "-2", "e2"})
	log.waitFor(t, 3)

	first := log.at(0)
	if len(first.query) != 0 {
		t.Errorf("first read has query %v, want none", first.query)
	}
	for i, wantETag := range []string{etag1, "e2"} {
		r := log.at(i + 1)
		q := r.query
		if len(q["wait_for_change"]) != 1 || q.Get("wait_for_change") != "true" ||
			len(q["timeout_sec"]) != 1 || q.Get("timeout_sec") != "60" ||
			len(q["last_etag"]) != 1 || q.Get("last_etag") != wantETag || len(q) != 3 {
			t.Errorf("long poll %d has query %v, want wait_for_change=true, timeout_sec=60, last_etag=%q", i, q, wantETag)
		}
	}
	for i := range log.count() {
		if r := log.at(i); r.path != basePath+watchPath || r.flavor != flavorValue {
			t.Errorf("request %d: path %q, flavor %q", i, r.path, r.flavor)
		}
	}
	if n := d.n.Load(); n != 2 {
		t.Errorf("%d callbacks, want 2", n)
	}
}

// expectBackoff checks that the watch waits on clk for a delay in
// [d/2, d]: no request before d/2 has passed, a new one by d.
func expectBackoff(t *testing.T, clk *clock.Fake, log *requestLog, d time.Duration) {
	t.Helper()
	if !clk.WaitForWaiters(1, 2*time.Second) {
		t.Fatalf("watch is not waiting on the clock (want a backoff of up to %v)", d)
	}
	n := log.count()
	clk.Advance(d/2 - time.Millisecond)
	time.Sleep(10 * time.Millisecond) // room for a wrongly early request to show
	if got := log.count(); got != n {
		t.Fatalf("request sent before the backoff's minimum %v", d/2)
	}
	clk.Advance(d/2 + time.Millisecond)
	log.waitFor(t, n+1)
}

func TestWatchBacksOffOnFailures(t *testing.T) {
	type answer func(w http.ResponseWriter, r *http.Request)
	ok := func(w http.ResponseWriter, _ *http.Request) { reply(w, http.StatusOK, "e1", secret) }
	status := func(code int) answer {
		return func(w http.ResponseWriter, _ *http.Request) { reply(w, code, "e1", secret) }
	}
	noETag := func(w http.ResponseWriter, _ *http.Request) { reply(w, http.StatusOK, "", secret+"-2") }
	tests := []struct {
		name          string
		first, others answer
		wantCalls     int32
	}{
		{name: "first read fails with 500", first: status(500), others: status(500)},
		{name: "first read has no ETag", first: noETag, others: noETag},
		{name: "long poll fails with 500", first: ok, others: status(500), wantCalls: 1},
		{name: "long poll fails with 429", first: ok, others: status(429), wantCalls: 1},
		{name: "long poll fails with 403", first: ok, others: status(403), wantCalls: 1},
		{name: "long poll answers at once with the same ETag", first: ok, others: ok, wantCalls: 1},
		{name: "long poll answers without an ETag", first: ok, others: noETag, wantCalls: 1},
		{name: "long poll answered by something else", first: ok, others: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("ETag", "e2")
			_, _ = w.Write([]byte(secret + "-2"))
		}, wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			srv, log := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				if n.Add(1) == 1 {
					tt.first(w, r)
				} else {
					tt.others(w, r)
				}
			})
			clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			cfg := testConfig(t, srv)
			cfg.Clock = clk
			cfg.RetryMax = -1 // one request per attempt, so the server's count is the watch's
			cfg.WatchBackoffMin, cfg.WatchBackoffMax = time.Second, 8*time.Second
			d := newDeliveries()
			startWatch(t, New(cfg), d.fn)

			initial := 1 // the request that failed, or the first read plus the failed poll
			if tt.wantCalls > 0 {
				initial = 2
			}
			log.waitFor(t, initial)
			// Delays double from 1 s and stop at 8 s; each is jittered into [d/2, d].
			for i, d := range []time.Duration{1, 2, 4, 8, 8, 8} {
				if !clk.WaitForWaiters(1, 2*time.Second) {
					t.Fatalf("step %d: watch is not waiting on the clock", i)
				}
				if got, want := log.count(), initial+i; got != want {
					t.Fatalf("step %d: %d requests, want %d: one per backoff", i, got, want)
				}
				expectBackoff(t, clk, log, d*time.Second)
			}
			if got := d.n.Load(); got != tt.wantCalls {
				t.Errorf("%d callbacks, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestWatchResetsBackoffAfterSuccess(t *testing.T) {
	var n atomic.Int32
	srv, log := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		switch i := n.Add(1); {
		case i == 1:
			reply(w, http.StatusOK, "e1", secret+"-1")
		case i == 5:
			reply(w, http.StatusOK, "e2", secret+"-2")
		default:
			reply(w, http.StatusInternalServerError, "", "")
		}
	})
	clk := clock.NewFake(time.Unix(0, 0))
	cfg := testConfig(t, srv)
	cfg.Clock, cfg.RetryMax = clk, -1
	cfg.WatchBackoffMin, cfg.WatchBackoffMax = time.Second, time.Minute
	d := newDeliveries()
	startWatch(t, New(cfg), d.fn)

	d.expect(t, delivery{secret + "-1", "e1"})
	log.waitFor(t, 2)
	expectBackoff(t, clk, log, 1*time.Second) // after poll 2 failed
	expectBackoff(t, clk, log, 2*time.Second) // after poll 3 failed
	expectBackoff(t, clk, log, 4*time.Second) // after poll 4 failed; poll 5 succeeds
	d.expect(t, delivery{secret + "-2", "e2"})
	log.waitFor(t, 6)                         // poll 6, at once, fails
	expectBackoff(t, clk, log, 1*time.Second) // back to the minimum
	expectBackoff(t, clk, log, 2*time.Second)
}

func TestWatchRepollsAfterFullHang(t *testing.T) {
	// A server that hangs the whole timeout and answers with the unchanged
	// ETag: the next poll follows at once, with no callback and no backoff.
	clk := clock.NewFake(time.Unix(0, 0))
	var n atomic.Int32
	srv, log := newServer(t, func(w http.ResponseWriter, r *http.Request, done <-chan struct{}) {
		switch i := n.Add(1); {
		case i == 1:
			reply(w, http.StatusOK, "e1", secret)
		case i <= 5:
			clk.Advance(60 * time.Second) // the hang
			reply(w, http.StatusOK, "e1", secret)
		default:
			select {
			case <-r.Context().Done():
			case <-done:
			}
		}
	})
	cfg := testConfig(t, srv)
	cfg.Clock = clk
	d := newDeliveries()
	startWatch(t, New(cfg), d.fn)

	log.waitFor(t, 6)
	if clk.WaitForWaiters(1, 20*time.Millisecond) {
		t.Error("watch backed off after a poll that hung the full timeout")
	}
	if got := d.n.Load(); got != 1 {
		t.Errorf("%d callbacks, want 1 (the ETag never changed)", got)
	}
}

func TestWatchNotDefined(t *testing.T) {
	tests := []struct {
		name      string
		defined   bool
		wantCalls int32
	}{
		{name: "at the first read", defined: false},
		{name: "deleted while watching", defined: true, wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fv := newFakeValue(secret, "e1")
			if !tt.defined {
				fv.remove()
			}
			srv, log := newServer(t, fv.serve)
			d := newDeliveries()
			w := startWatch(t, New(testConfig(t, srv)), d.fn)
			if tt.defined {
				d.expect(t, delivery{secret, "e1"})
				log.waitFor(t, 2)
				fv.remove()
			}
			err := w.wait(t)
			if !errors.Is(err, ErrNotDefined) {
				t.Fatalf("Watch error %v, want ErrNotDefined", err)
			}
			if !strings.Contains(err.Error(), watchPath) || strings.Contains(err.Error(), secret) {
				t.Errorf("Watch error %q should name the path and not the value", err)
			}
			if got := d.n.Load(); got != tt.wantCalls {
				t.Errorf("%d callbacks, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestWatchReturnsCallbackError(t *testing.T) {
	fv := newFakeValue(secret, "e1")
	srv, log := newServer(t, fv.serve)
	errStop := errors.New("stop")
	w := startWatch(t, New(testConfig(t, srv)), func(string, string) error { return errStop })
	if err := w.wait(t); err != errStop {
		t.Fatalf("Watch error %v, want the callback's", err)
	}
	if got := log.count(); got != 1 {
		t.Errorf("%d requests, want 1", got)
	}
}

func TestWatchCancel(t *testing.T) {
	tests := []struct {
		name string
		// failing makes the server answer 500, so the watch sits in backoff.
		failing bool
	}{
		{name: "during a long poll"},
		{name: "during backoff", failing: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fv := newFakeValue(secret, "e1")
			srv, log := newServer(t, func(w http.ResponseWriter, r *http.Request, done <-chan struct{}) {
				if tt.failing {
					reply(w, http.StatusInternalServerError, "", "")
					return
				}
				fv.serve(w, r, done)
			})
			clk := clock.NewFake(time.Unix(0, 0))
			cfg := testConfig(t, srv)
			cfg.Clock, cfg.RetryMax = clk, -1
			w := startWatch(t, New(cfg), newDeliveries().fn)
			if tt.failing {
				if !clk.WaitForWaiters(1, 2*time.Second) {
					t.Fatal("watch is not backing off")
				}
			} else {
				log.waitFor(t, 2) // hanging in the long poll
			}
			start := time.Now()
			w.cancel()
			if err := w.wait(t); !errors.Is(err, context.Canceled) {
				t.Fatalf("Watch error %v, want context.Canceled", err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("Watch returned %v after cancel, want promptly", d)
			}
			n := log.count()
			clk.Advance(time.Hour)
			time.Sleep(10 * time.Millisecond)
			if got := log.count(); got != n {
				t.Errorf("%d requests after Watch returned", got-n)
			}
		})
	}
}
