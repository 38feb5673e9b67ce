package csr

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodetrust/nodetrust/internal/clock"
)

const (
	// maxWatchFailures is how many watches in a row may fail before
	// the waiter polls instead.
	maxWatchFailures = 3
	// healthyWatch is how long a watch must have lasted, when it brought
	// no event, for its end to count as normal rather than a failure.
	healthyWatch = 30 * time.Second
	// watchSeconds is the server-side watch timeout asked for; a random
	// part up to the same again spreads re-watches of many agents.
	watchSeconds = 300
)

// waiter follows one request until it is issued.
type waiter struct {
	c       *Client
	clk     clock.Clock
	log     *slog.Logger
	name    string
	pub     crypto.PublicKey
	timeout time.Duration
	poll    time.Duration

	uid types.UID // of the request being waited for
	rv  string    // the latest resourceVersion seen
}

// ctxErr is the error for a done ctx: ErrTimeout when WaitTimeout
// passed, else the caller's cancellation.
func (w *waiter) ctxErr(ctx context.Context) error {
	if errors.Is(context.Cause(ctx), ErrTimeout) {
		return fmt.Errorf("certificate signing request %q not issued within %v: %w", w.name, w.timeout, ErrTimeout)
	}
	return fmt.Errorf("wait for certificate signing request %q: %w", w.name, ctx.Err())
}

// check returns the certificate when c is issued, an error when it never
// will be, or nil and nil to keep waiting.
func (w *waiter) check(c *certv1.CertificateSigningRequest) ([]byte, error) {
	if w.uid != "" && c.UID != w.uid {
		return nil, fmt.Errorf("%w: %q was replaced by another request (uid %s, was %s)", ErrDeleted, w.name, c.UID, w.uid)
	}
	if c.ResourceVersion != "" {
		w.rv = c.ResourceVersion
	}
	if err := conditionError(c); err != nil {
		return nil, err
	}
	if condition(c, certv1.CertificateApproved) == nil || len(c.Status.Certificate) == 0 {
		return nil, nil
	}
	if _, err := leaf(c.Status.Certificate, w.pub); err != nil {
		return nil, fmt.Errorf("certificate signing request %q: %w", w.name, err)
	}
	w.log.Info("certificate issued")
	return c.Status.Certificate, nil
}

// wait waits for cur, the request as created or read, to be issued.
func (w *waiter) wait(ctx context.Context, cur *certv1.CertificateSigningRequest) ([]byte, error) {
	w.uid, w.rv = cur.UID, cur.ResourceVersion
	if cert, err := w.check(cur); cert != nil || err != nil {
		return cert, err
	}
	failures := 0
	for {
		if failures >= maxWatchFailures {
			w.log.Warn("watching keeps failing; polling instead", "interval", w.poll)
			return w.pollLoop(ctx)
		}
		start := w.clk.Now()
		res := w.watch(ctx)
		switch {
		case res.cert != nil || res.err != nil:
			return res.cert, res.err
		case ctx.Err() != nil:
			return nil, w.ctxErr(ctx)
		}
		switch res.end {
		case endUnsupported:
			w.log.Info("cannot watch; polling instead", "interval", w.poll, "err", res.cause)
			return w.pollLoop(ctx)
		case endGone:
			// The resource version is too old: read the request again
			// and watch from its current version.
			failures++
			w.log.Debug("watch expired; reading the request again", "err", res.cause)
			if cert, err := w.refresh(ctx); cert != nil || err != nil {
				return cert, err
			}
		case endClosed:
			if res.events > 0 || w.clk.Now().Sub(start) >= healthyWatch {
				failures = 0
				w.log.Debug("watch ended; watching again", "err", res.cause)
				continue
			}
			failures++
			w.log.Debug("watch failed; watching again after a pause", "err", res.cause, "failures", failures)
			if err := w.sleep(ctx, w.jittered()); err != nil {
				return nil, err
			}
		}
	}
}

// refresh reads the request again and checks it. Transient errors are
// logged and leave it to the caller to retry.
func (w *waiter) refresh(ctx context.Context) ([]byte, error) {
	cur, err := w.c.get(ctx, w.name)
	if err != nil {
		if ctx.Err() != nil {
			return nil, w.ctxErr(ctx)
		}
		switch statusCode(err) {
		case http.StatusNotFound:
			return nil, fmt.Errorf("%w: %q: %w", ErrDeleted, w.name, err)
		case http.StatusUnauthorized, http.StatusForbidden:
			return nil, fmt.Errorf("read certificate signing request %q: %w", w.name, err)
		}
		w.log.Warn("read certificate signing request", "err", err)
		return nil, nil
	}
	return w.check(cur)
}

// pollLoop reads the request every jittered poll interval until it is
// issued or can no longer be.
func (w *waiter) pollLoop(ctx context.Context) ([]byte, error) {
	for {
		if err := w.sleep(ctx, w.jittered()); err != nil {
			return nil, err
		}
		if cert, err := w.refresh(ctx); cert != nil || err != nil {
			return cert, err
		}
	}
}

// jittered returns the poll interval stretched by up to 20%.
func (w *waiter) jittered() time.Duration {
	return w.poll + rand.N(w.poll/5+1)
}

func (w *waiter) sleep(ctx context.Context, d time.Duration) error {
	t := w.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return w.ctxErr(ctx)
	case <-t.C():
		return nil
	}
}

// watchEnd is why a watch ended without an outcome.
type watchEnd int

const (
	endClosed      watchEnd = iota // the stream ended or broke: watch again
	endGone                        // the resource version is too old: read again
	endUnsupported                 // the server cannot or will not watch: poll
)

type watchResult struct {
	cert   []byte
	err    error // final: stop waiting
	end    watchEnd
	cause  error // why it ended, for the log
	events int
}

type watchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// watch watches the request once, from w.rv.
func (w *waiter) watch(ctx context.Context) watchResult {
	q := url.Values{}
	q.Set("watch", "true")
	q.Set("fieldSelector", "metadata.name="+w.name)
	if w.rv != "" {
		q.Set("resourceVersion", w.rv)
	}
	q.Set("allowWatchBookmarks", "true")
	q.Set("timeoutSeconds", strconv.Itoa(watchSeconds+rand.N(watchSeconds)))
	u := w.c.url("", q)
	resp, err := w.c.send(ctx, http.MethodGet, u, nil)
	if err != nil {
		return watchResult{end: endClosed, cause: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := readAll(resp.Body)
		ae := apiError(http.MethodGet, u, resp.StatusCode, b)
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			return watchResult{err: fmt.Errorf("watch certificate signing request %q: %w", w.name, ae)}
		case http.StatusGone:
			return watchResult{end: endGone, cause: ae}
		case http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound, http.StatusMethodNotAllowed,
			http.StatusNotAcceptable, http.StatusUnsupportedMediaType, http.StatusNotImplemented:
			return watchResult{end: endUnsupported, cause: ae}
		}
		return watchResult{end: endClosed, cause: ae}
	}
	lim := &eventLimit{r: resp.Body}
	dec := json.NewDecoder(lim)
	events := 0
	for {
		lim.n = MaxResponse
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return watchResult{end: endClosed, cause: err, events: events}
		}
		switch ev.Type {
		case "ADDED", "MODIFIED":
			events++
			var c certv1.CertificateSigningRequest
			if err := json.Unmarshal(ev.Object, &c); err != nil {
				return watchResult{end: endClosed, cause: fmt.Errorf("decode %s event: %w", ev.Type, err), events: events}
			}
			if c.Name != w.name {
				continue
			}
			if cert, err := w.check(&c); cert != nil || err != nil {
				return watchResult{cert: cert, err: err}
			}
		case "DELETED":
			var c certv1.CertificateSigningRequest
			if json.Unmarshal(ev.Object, &c) == nil && c.Name != w.name {
				continue
			}
			return watchResult{err: fmt.Errorf("%w: %q was deleted while waiting", ErrDeleted, w.name)}
		case "BOOKMARK":
			events++
			var m struct {
				Metadata metav1.ObjectMeta `json:"metadata"`
			}
			if json.Unmarshal(ev.Object, &m) == nil && m.Metadata.ResourceVersion != "" {
				w.rv = m.Metadata.ResourceVersion
			}
		case "ERROR":
			var st metav1.Status
			_ = json.Unmarshal(ev.Object, &st)
			ae := &APIError{Method: http.MethodGet, URL: u, Code: int(st.Code), Reason: st.Reason, Message: st.Message}
			if st.Code == http.StatusGone || st.Reason == metav1.StatusReasonExpired || st.Reason == metav1.StatusReasonGone {
				return watchResult{end: endGone, cause: ae}
			}
			return watchResult{end: endClosed, cause: ae}
		}
	}
}

// eventLimit bounds the bytes read for one watch event; the reader resets
// n before each.
type eventLimit struct {
	r io.Reader
	n int64
}

var errEventTooLarge = fmt.Errorf("watch event is over %d bytes", MaxResponse)

func (l *eventLimit) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errEventTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
