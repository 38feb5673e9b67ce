package mdclient

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestGet(t *testing.T) {
	// script answers request i (from 0) with steps[i], repeating the last.
	type step struct {
		status int
		flavor bool
		body   string
	}
	ok := func(body string) step { return step{http.StatusOK, true, body} }
	status := func(code int) step { return step{code, true, secret + " in an error page"} }

	tests := []struct {
		name         string
		steps        []step
		retryMax     int
		want         string
		wantErr      error // checked with errors.Is
		wantStatus   int   // when non-zero, a *StatusError with this code
		wantInErr    []string
		wantRequests int
	}{
		{name: "ok", steps: []step{ok(secret + "-value")}, want: secret + "-value", wantRequests: 1},
		{name: "empty value", steps: []step{ok("")}, want: "", wantRequests: 1},
		{
			name:  "missing response flavor header",
			steps: []step{{http.StatusOK, false, secret}},
			// The host is named; the value is not.
			wantErr: ErrNotMetadataServer, wantInErr: []string{"127.0.0.1:", "instance/attributes/key"}, wantRequests: 1,
		},
		{
			name:    "404 without flavor is not a metadata server",
			steps:   []step{{http.StatusNotFound, false, secret}},
			wantErr: ErrNotMetadataServer, wantRequests: 1,
		},
		{
			name: "404 is not defined", steps: []step{status(404)},
			wantErr: ErrNotDefined, wantStatus: 404, wantInErr: []string{"instance/attributes/key"}, wantRequests: 1,
		},
		{name: "5xx retried then success", steps: []step{status(500), status(503), status(502), ok("v")}, want: "v", wantRequests: 4},
		{name: "429 retried then success", steps: []step{status(429), ok("v")}, want: "v", wantRequests: 2},
		{name: "5xx until retries run out", steps: []step{status(500)}, retryMax: 2, wantStatus: 500, wantRequests: 3},
		{name: "negative RetryMax means no retries", steps: []step{status(503), ok("v")}, retryMax: -1, wantStatus: 503, wantRequests: 1},
		{name: "400 not retried", steps: []step{status(400), ok("v")}, wantStatus: 400, wantRequests: 1},
		{name: "403 not retried", steps: []step{status(403), ok("v")}, wantStatus: 403, wantRequests: 1},
		{name: "412 not retried", steps: []step{status(412), ok("v")}, wantStatus: 412, wantRequests: 1},
		{name: "501 not retried", steps: []step{status(501), ok("v")}, wantStatus: 501, wantRequests: 1},
		{name: "body at the size limit", steps: []step{ok(strings.Repeat("x", MaxValueSize))}, want: strings.Repeat("x", MaxValueSize), wantRequests: 1},
		{
			name: "body over the size limit", steps: []step{ok(strings.Repeat(secret, MaxValueSize/len(secret)+1))},
			wantErr: ErrTooLarge, wantInErr: []string{"instance/attributes/key"}, wantRequests: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			srv, log := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				if r.Header.Get(flavorHeader) != flavorValue {
					reply(w, http.StatusForbidden, "", "Missing Metadata-Flavor:Google header.")
					return
				}
				s := tt.steps[min(int(n.Add(1))-1, len(tt.steps)-1)]
				if s.flavor {
					w.Header().Set(flavorHeader, flavorValue)
				}
				w.WriteHeader(s.status)
				_, _ = io.WriteString(w, s.body)
			})
			cfg := testConfig(t, srv)
			cfg.RetryMax = tt.retryMax
			c := New(cfg)

			got, err := c.Get(context.Background(), "instance/attributes/key")

			if n := log.count(); n != tt.wantRequests {
				t.Errorf("server saw %d requests, want %d", n, tt.wantRequests)
			}
			for i := range log.count() {
				r := log.at(i)
				if r.path != "/computeMetadata/v1/instance/attributes/key" || len(r.query) != 0 || r.flavor != "Google" {
					t.Errorf("request %d: path %q query %v flavor %q", i, r.path, r.query, r.flavor)
				}
			}
			wantErr := tt.wantErr != nil || tt.wantStatus != 0
			if !wantErr {
				if err != nil {
					t.Fatalf("Get: %v", err)
				}
				if got != tt.want {
					t.Fatalf("Get = %.40q (%d bytes), want %.40q (%d bytes)", got, len(got), tt.want, len(tt.want))
				}
				return
			}
			if err == nil {
				t.Fatalf("Get = %.40q, want an error", got)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Get error %q is not %q", err, tt.wantErr)
			}
			if tt.wantStatus != 0 {
				var se *StatusError
				if !errors.As(err, &se) || se.StatusCode != tt.wantStatus || se.Path != "instance/attributes/key" {
					t.Errorf("Get error %q (%#v), want a *StatusError %d for the path", err, se, tt.wantStatus)
				}
			}
			if errors.Is(err, ErrNotDefined) != (tt.wantStatus == 404) {
				t.Errorf("errors.Is(%q, ErrNotDefined) = %v", err, !(tt.wantStatus == 404))
			}
			for _, s := range tt.wantInErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Get error %q does not name %q", err, s)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Get error %q contains the response body", err)
			}
		})
	}
}

func TestGetWithETag(t *testing.T) {
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		reply(w, http.StatusOK, "d34db33fd34db33f", "v")
	})
	c := New(testConfig(t, srv))
	v, etag, err := c.GetWithETag(context.Background(), "instance/attributes/key")
	if err != nil || v != "v" || etag != "d34db33fd34db33f" {
		t.Fatalf("GetWithETag = %q, %q, %v; want v, d34db33fd34db33f, nil", v, etag, err)
	}
}

// countingTransport counts round trips and fails the first failures of
// them with a connection error before passing the rest to next.
type countingTransport struct {
	n        atomic.Int32
	failures int32
	next     http.RoundTripper
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.n.Add(1) <= c.failures {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	return c.next.RoundTrip(r)
}

func TestConnectionRefusedRetriedWithBackoff(t *testing.T) {
	// A port with nothing listening: take one, then close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	tr := &countingTransport{next: defaultHTTPClient().Transport}
	c := New(Config{
		Host:         addr,
		HTTPClient:   &http.Client{Transport: tr},
		Logger:       testLogger(t),
		RetryMax:     3,
		RetryWaitMin: 10 * time.Millisecond,
		RetryWaitMax: 15 * time.Millisecond,
	})
	start := time.Now()
	_, err = c.Get(context.Background(), "instance/name")
	elapsed := time.Since(start)

	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Get error %v, want connection refused", err)
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "4 attempts") {
		t.Errorf("Get error %q should name the host and the attempts", err)
	}
	if n := tr.n.Load(); n != 4 {
		t.Errorf("%d attempts, want 4 (1 + RetryMax 3)", n)
	}
	// Waits are at least half of 10, 15 (capped), 15 ms.
	if min := 20 * time.Millisecond; elapsed < min {
		t.Errorf("retries took %v, want at least %v of backoff", elapsed, min)
	}
}

func TestConnectionErrorThenSuccess(t *testing.T) {
	srv, log := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		reply(w, http.StatusOK, "", "v")
	})
	tr := &countingTransport{failures: 2, next: srv.Client().Transport}
	cfg := testConfig(t, srv)
	cfg.HTTPClient = &http.Client{Transport: tr}
	v, err := New(cfg).Get(context.Background(), "instance/name")
	if err != nil || v != "v" {
		t.Fatalf("Get = %q, %v; want v, nil", v, err)
	}
	if n, s := tr.n.Load(), log.count(); n != 3 || s != 1 {
		t.Errorf("%d attempts and %d served, want 3 and 1", n, s)
	}
}

func TestHostSelection(t *testing.T) {
	tests := []struct {
		name   string
		env    string
		host   string
		wantAt string
	}{
		{name: "default", wantAt: "169.254.169.254"},
		{name: "GCE_METADATA_HOST", env: "metadata.test:8080", wantAt: "metadata.test:8080"},
		{name: "explicit host beats the environment", env: "metadata.test:8080", host: "127.0.0.1:9", wantAt: "127.0.0.1:9"},
		{name: "explicit host", host: "[::1]:80", wantAt: "[::1]:80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(HostEnv, tt.env)
			var got string
			c := New(Config{
				Host:   tt.host,
				Logger: testLogger(t),
				HTTPClient: &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
					got = r.URL.String()
					return &http.Response{
						StatusCode: http.StatusOK,
						Header:     http.Header{flavorHeader: {flavorValue}},
						Body:       io.NopCloser(strings.NewReader("v")),
						Request:    r,
					}, nil
				})},
			})
			if _, err := c.Get(context.Background(), "instance/name"); err != nil {
				t.Fatal(err)
			}
			if want := "http://" + tt.wantAt + "/computeMetadata/v1/instance/name"; got != want {
				t.Errorf("requested %q, want %q", got, want)
			}
		})
	}
}

func TestGCEMetadataHostReachesServer(t *testing.T) {
	srv, log := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		reply(w, http.StatusOK, "", "node-1\n")
	})
	t.Setenv(HostEnv, srv.Listener.Addr().String())
	name, err := New(Config{Logger: testLogger(t)}).InstanceName(context.Background())
	if err != nil || name != "node-1" {
		t.Fatalf("InstanceName = %q, %v; want node-1, nil", name, err)
	}
	if log.count() != 1 {
		t.Errorf("server saw %d requests, want 1", log.count())
	}
}

func TestInvalidRequestsSendNothing(t *testing.T) {
	tests := []struct {
		name string
		host string
		call func(context.Context, *Client) error
	}{
		{name: "empty suffix", call: get("")},
		{name: "leading slash", call: get("/instance/name")},
		{name: "double leading slash", call: get("//evil.example/x")},
		{name: "query injection", call: get("instance/name?recursive=true")},
		{name: "fragment", call: get("instance/name#x")},
		{name: "escape", call: get("instance/name%3Frecursive=true")},
		{name: "dot dot", call: get("instance/../project/project-id")},
		{name: "dot", call: get("./instance/name")},
		{name: "empty segment", call: get("instance//name")},
		{name: "space", call: get("instance/ name")},
		{name: "newline", call: get("instance/name\nX-Injected: 1")},
		{name: "backslash", call: get(`instance\name`)},
		{name: "non-ASCII", call: get("instance/nämé")},
		{name: "attribute key with slash", call: func(ctx context.Context, c *Client) error {
			_, err := c.InstanceAttribute(ctx, "../name")
			return err
		}},
		{name: "empty attribute key", call: func(ctx context.Context, c *Client) error {
			_, err := c.ProjectAttribute(ctx, "")
			return err
		}},
		{name: "watch with a query", call: func(ctx context.Context, c *Client) error {
			return c.Watch(ctx, "instance/attributes/?recursive=true", func(string, string) error { return nil })
		}},
		{name: "host with scheme", host: "http://metadata", call: get("instance/name")},
		{name: "host with path", host: "metadata/x", call: get("instance/name")},
		{name: "host with user", host: "u@metadata", call: get("instance/name")},
		{name: "watch on bad host", host: "metadata?x", call: func(ctx context.Context, c *Client) error {
			return c.Watch(ctx, "instance/name", func(string, string) error { return nil })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sent atomic.Int32
			c := New(Config{
				Host:   cmp.Or(tt.host, "127.0.0.1:9"),
				Logger: testLogger(t),
				HTTPClient: &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
					sent.Add(1)
					return nil, errors.New("must not be sent")
				})},
			})
			if err := tt.call(context.Background(), c); err == nil {
				t.Error("got no error")
			}
			if n := sent.Load(); n != 0 {
				t.Errorf("%d requests sent, want none", n)
			}
		})
	}
}

func get(suffix string) func(context.Context, *Client) error {
	return func(ctx context.Context, c *Client) error {
		_, err := c.Get(ctx, suffix)
		return err
	}
}

func TestHelpers(t *testing.T) {
	srv, log := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		reply(w, http.StatusOK, "", " "+strings.TrimPrefix(r.URL.Path, basePath)+"\n")
	})
	c := New(testConfig(t, srv))
	ctx := context.Background()
	tests := []struct {
		name string
		call func() (string, error)
		want string
	}{
		{"InstanceAttribute", func() (string, error) { return c.InstanceAttribute(ctx, "nodetrust-token") }, " instance/attributes/nodetrust-token\n"},
		{"ProjectAttribute", func() (string, error) { return c.ProjectAttribute(ctx, "ssh-keys") }, " project/attributes/ssh-keys\n"},
		{"InstanceName", func() (string, error) { return c.InstanceName(ctx) }, "instance/name"},
		{"ProjectID", func() (string, error) { return c.ProjectID(ctx) }, "project/project-id"},
		{"Hostname", func() (string, error) { return c.Hostname(ctx) }, "instance/hostname"},
		{"directory listing", func() (string, error) { return c.Get(ctx, "instance/attributes/") }, " instance/attributes/\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.call()
			if err != nil || got != tt.want {
				t.Errorf("%s = %q, %v; want %q, nil", tt.name, got, err, tt.want)
			}
		})
	}
	if log.count() != len(tests) {
		t.Errorf("server saw %d requests, want %d", log.count(), len(tests))
	}
}

func TestGetHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		cancel() // the client is now about to wait an hour before retrying
		reply(w, http.StatusServiceUnavailable, "", "")
	})
	cfg := testConfig(t, srv)
	cfg.RetryWaitMin, cfg.RetryWaitMax = time.Hour, time.Hour
	start := time.Now()
	_, err := New(cfg).Get(ctx, "instance/name")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Get error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Get returned %v after cancel, want promptly", d)
	}
}
