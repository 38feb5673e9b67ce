package mdclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/nodetrust/nodetrust/internal/clock"
)

const (
	// HostEnv is the environment variable that names the metadata server
	// as host or host:port, without a scheme, as Google's clients read it.
	HostEnv = "GCE_METADATA_HOST"
	// DefaultHost is the metadata server's link-local address on GCE.
	DefaultHost = "169.254.169.254"
	// MaxValueSize is the largest response body, in bytes, that the
	// client reads; a larger one fails with ErrTooLarge.
	MaxValueSize = 1 << 20
)

// Defaults for the zero values of Config.
const (
	defaultRetryMax        = 5
	defaultRetryWaitMin    = 100 * time.Millisecond
	defaultRetryWaitMax    = 5 * time.Second
	defaultRequestTimeout  = 5 * time.Second
	defaultWatchTimeout    = 60 * time.Second
	watchTimeoutSlack      = 10 * time.Second // the HTTP timeout outlives the server's hang by this much
	defaultWatchBackoffMin = time.Second
	defaultWatchBackoffMax = 30 * time.Second
)

const (
	flavorHeader = "Metadata-Flavor"
	flavorValue  = "Google"
	basePath     = "/computeMetadata/v1/"
	userAgent    = "nodetrust-mdclient/1"
)

// ErrNotDefined is returned, wrapped in a *StatusError, by Get,
// GetWithETag, the attribute and instance helpers and Watch when the
// server answers 404: the value is not defined (or, for Watch, was
// deleted).
var ErrNotDefined = errors.New("mdclient: metadata value not defined")

// ErrNotMetadataServer is returned by every method that reads a value when
// the server's answer lacks the "Metadata-Flavor: Google" response header,
// that is, when whatever answered at the host is not a metadata server.
var ErrNotMetadataServer = errors.New("mdclient: not a metadata server")

// ErrTooLarge is returned by every method that reads a value when the
// response body is longer than MaxValueSize.
var ErrTooLarge = errors.New("mdclient: metadata value too large")

// StatusError reports an answer from the metadata server whose status is
// not 200 OK. It names the path and never carries the response body. A 404
// unwraps to ErrNotDefined.
type StatusError struct {
	Path       string // the suffix requested, e.g. "instance/attributes/foo"
	StatusCode int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("metadata %s: %d %s", e.Path, e.StatusCode, http.StatusText(e.StatusCode))
}

// Unwrap returns ErrNotDefined for a 404 and nil otherwise.
func (e *StatusError) Unwrap() error {
	if e.StatusCode == http.StatusNotFound {
		return ErrNotDefined
	}
	return nil
}

// Config configures a Client. Its zero value is ready to use: it talks to
// $GCE_METADATA_HOST or 169.254.169.254 with the defaults below.
type Config struct {
	// Host is the metadata server as host or host:port, without a scheme.
	// Empty means $GCE_METADATA_HOST, or DefaultHost when that is unset.
	Host string

	// HTTPClient carries the requests. Nil means a client that ignores
	// HTTP_PROXY (metadata must never go through a proxy) and dials with a
	// 2 s timeout. The client's Timeout is replaced by RequestTimeout, and
	// by WatchTimeout plus 10 s for Watch's long polls, on copies.
	HTTPClient *http.Client

	// Logger receives retry and watch diagnostics. Nil means slog.Default().
	Logger *slog.Logger

	// Clock drives Watch's backoff between requests. Nil means the real
	// clock. (Retries inside one request wait on the real clock: the retry
	// library offers no hook for another.)
	Clock clock.Clock

	// RetryMax is how many times one request is retried after a connection
	// error, a 5xx (except 501) or a 429. Other statuses are never retried.
	// Zero means 5; a negative value means no retries.
	RetryMax int
	// RetryWaitMin and RetryWaitMax bound the jittered exponential wait
	// between those retries; Retry-After is honoured up to RetryWaitMax.
	// Zero means 100 ms and 5 s.
	RetryWaitMin, RetryWaitMax time.Duration

	// RequestTimeout bounds each attempt of a plain GET, body included.
	// Zero means 5 s.
	RequestTimeout time.Duration

	// WatchTimeout is how long Watch asks the server to hang each long
	// poll (timeout_sec, whole seconds, at least 1). Zero means 60 s.
	WatchTimeout time.Duration
	// WatchBackoffMin and WatchBackoffMax bound Watch's jittered
	// exponential backoff after a failed poll. Zero means 1 s and 30 s.
	WatchBackoffMin, WatchBackoffMax time.Duration
}

// Client reads a metadata server. It is safe for concurrent use.
type Client struct {
	host    string
	hostErr error // non-nil when host is unusable; every call returns it
	logger  *slog.Logger
	clock   clock.Clock
	plain   *retryablehttp.Client // RequestTimeout per attempt
	long    *retryablehttp.Client // for long polls: WatchTimeout + slack per attempt

	watchTimeout                     time.Duration
	watchBackoffMin, watchBackoffMax time.Duration
	random                           func() float64 // jitter source in [0, 1)
}

// New returns a Client for cfg, filling in defaults. An unusable host
// (from cfg.Host or $GCE_METADATA_HOST) is reported by every call.
func New(cfg Config) *Client {
	c := &Client{
		host:            cfg.Host,
		logger:          cfg.Logger,
		clock:           clock.Or(cfg.Clock),
		watchTimeout:    orDefault(cfg.WatchTimeout, defaultWatchTimeout),
		watchBackoffMin: orDefault(cfg.WatchBackoffMin, defaultWatchBackoffMin),
		watchBackoffMax: orDefault(cfg.WatchBackoffMax, defaultWatchBackoffMax),
		random:          rand.Float64,
	}
	if c.host == "" {
		c.host = os.Getenv(HostEnv)
	}
	if c.host == "" {
		c.host = DefaultHost
	}
	c.hostErr = checkHost(c.host)
	if c.logger == nil {
		c.logger = slog.Default()
	}
	c.logger = c.logger.With(keyComponent, "mdclient")
	c.watchTimeout = max(c.watchTimeout.Truncate(time.Second), time.Second)
	c.watchBackoffMax = max(c.watchBackoffMax, c.watchBackoffMin)

	retryMax := cfg.RetryMax
	switch {
	case retryMax == 0:
		retryMax = defaultRetryMax
	case retryMax < 0:
		retryMax = 0
	}
	waitMin := orDefault(cfg.RetryWaitMin, defaultRetryWaitMin)
	waitMax := max(orDefault(cfg.RetryWaitMax, defaultRetryWaitMax), waitMin)

	base := cfg.HTTPClient
	if base == nil {
		base = defaultHTTPClient()
	}
	c.plain = c.retryClient(base, orDefault(cfg.RequestTimeout, defaultRequestTimeout), retryMax, waitMin, waitMax)
	c.long = c.retryClient(base, c.watchTimeout+watchTimeoutSlack, retryMax, waitMin, waitMax)
	return c
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// checkHost accepts host or host:port and nothing else, so that the
// request URL cannot be bent by a scheme, path, user info or query.
func checkHost(host string) error {
	u, err := url.Parse("http://" + host)
	if err != nil || u.Host != host || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Hostname() == "" {
		return fmt.Errorf("mdclient: invalid metadata host %q: want host or host:port", host)
	}
	return nil
}

func defaultHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy: nil, // never send metadata requests, or their answers, through a proxy
			DialContext: (&net.Dialer{
				Timeout:   2 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     60 * time.Second,
		},
	}
}

// retryClient wraps a copy of base whose Timeout is perAttempt.
func (c *Client) retryClient(base *http.Client, perAttempt time.Duration, retryMax int, waitMin, waitMax time.Duration) *retryablehttp.Client {
	hc := *base
	hc.Timeout = perAttempt
	return &retryablehttp.Client{
		HTTPClient:   &hc,
		Logger:       retryLogger{c.logger},
		RetryMax:     retryMax,
		RetryWaitMin: waitMin,
		RetryWaitMax: waitMax,
		CheckRetry:   checkRetry,
		Backoff:      c.retryBackoff,
		ErrorHandler: giveUp,
		// No RequestLogHook or ResponseLogHook: nothing here may see a body.
	}
}

// checkRetry retries connection errors, 429 and 5xx except 501, and
// nothing else; it stops at once when the context is done.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		// Connection-level failure: DefaultRetryPolicy retries all but the
		// hopeless ones (bad scheme, bad header, untrusted certificate).
		return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
	}
	switch code := resp.StatusCode; {
	case code == http.StatusTooManyRequests:
		return true, nil
	case code >= 500 && code != http.StatusNotImplemented:
		return true, nil
	}
	return false, nil
}

// retryBackoff is the wait before retry number attempt+1 of one request.
func (c *Client) retryBackoff(waitMin, waitMax time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if d, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			return min(max(d, waitMin), waitMax)
		}
	}
	return backoffDelay(waitMin, waitMax, attempt, c.random())
}

// giveUp runs when retryablehttp stops without success. A final response
// with a retryable status is handed back so that the caller reports its
// status; a final error is returned with the number of attempts.
func giveUp(resp *http.Response, err error, attempts int) (*http.Response, error) {
	if err == nil {
		return resp, nil
	}
	if resp != nil {
		drainAndClose(resp.Body)
	}
	if attempts > 1 {
		err = fmt.Errorf("giving up after %d attempts: %w", attempts, err)
	}
	return nil, err
}

func drainAndClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	_ = body.Close()
}

// Get returns the value at suffix, a path relative to
// http://HOST/computeMetadata/v1/ such as "instance/hostname" (a trailing
// slash asks for a directory listing). The value is returned as sent.
//
// A 404 fails with an error wrapping ErrNotDefined; see also
// ErrNotMetadataServer, ErrTooLarge and *StatusError.
func (c *Client) Get(ctx context.Context, suffix string) (string, error) {
	v, _, err := c.GetWithETag(ctx, suffix)
	return v, err
}

// GetWithETag is Get that also returns the value's ETag response header,
// empty when the server sent none.
func (c *Client) GetWithETag(ctx context.Context, suffix string) (value, etag string, err error) {
	return c.get(ctx, c.plain, suffix, nil)
}

// InstanceAttribute returns the custom instance metadata attribute key,
// from instance/attributes/<key>.
func (c *Client) InstanceAttribute(ctx context.Context, key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return c.Get(ctx, "instance/attributes/"+key)
}

// ProjectAttribute returns the custom project metadata attribute key, from
// project/attributes/<key>.
func (c *Client) ProjectAttribute(ctx context.Context, key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return c.Get(ctx, "project/attributes/"+key)
}

// InstanceName returns the instance's name (instance/name), trimmed of
// surrounding space.
func (c *Client) InstanceName(ctx context.Context) (string, error) {
	return c.getTrimmed(ctx, "instance/name")
}

// ProjectID returns the project ID (project/project-id), trimmed of
// surrounding space.
func (c *Client) ProjectID(ctx context.Context) (string, error) {
	return c.getTrimmed(ctx, "project/project-id")
}

// Hostname returns the instance's fully qualified host name
// (instance/hostname), trimmed of surrounding space.
func (c *Client) Hostname(ctx context.Context) (string, error) {
	return c.getTrimmed(ctx, "instance/hostname")
}

func (c *Client) getTrimmed(ctx context.Context, suffix string) (string, error) {
	v, err := c.Get(ctx, suffix)
	return strings.TrimSpace(v), err
}

// get performs one GET, with retries, of suffix plus query.
func (c *Client) get(ctx context.Context, rc *retryablehttp.Client, suffix string, query url.Values) (value, etag string, err error) {
	if c.hostErr != nil {
		return "", "", c.hostErr
	}
	if err := checkSuffix(suffix); err != nil {
		return "", "", err
	}
	u := url.URL{Scheme: "http", Host: c.host, Path: basePath + suffix, RawQuery: query.Encode()}
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", "", fmt.Errorf("build request for %s: %w", suffix, err)
	}
	req.Header.Set(flavorHeader, flavorValue)
	req.Header.Set("User-Agent", userAgent)
	resp, err := rc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "", "", fmt.Errorf("get %s from %s: %w", suffix, c.host, ctx.Err())
		}
		return "", "", fmt.Errorf("get %s from %s: %w", suffix, c.host, err)
	}
	defer drainAndClose(resp.Body)

	// Check the flavor first: a 404 from something that is not a metadata
	// server does not mean the value is undefined.
	if resp.Header.Get(flavorHeader) != flavorValue {
		return "", "", fmt.Errorf("get %s from %s: %w (no %s: %s response header)", suffix, c.host, ErrNotMetadataServer, flavorHeader, flavorValue)
	}
	if resp.StatusCode != http.StatusOK {
		return "", "", &StatusError{Path: suffix, StatusCode: resp.StatusCode}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxValueSize+1))
	if err != nil {
		return "", "", fmt.Errorf("read %s from %s: %w", suffix, c.host, err)
	}
	if len(b) > MaxValueSize {
		return "", "", fmt.Errorf("read %s from %s: %w (over %d bytes)", suffix, c.host, ErrTooLarge, MaxValueSize)
	}
	return string(b), resp.Header.Get("ETag"), nil
}

// checkSuffix accepts a clean relative path: no leading slash, no empty,
// "." or ".." segment (a trailing slash for a directory is fine), and no
// character that could start a query or fragment or smuggle an escape.
func checkSuffix(suffix string) error {
	bad := func(why string) error {
		return fmt.Errorf("mdclient: invalid metadata path %q: %s", suffix, why)
	}
	if suffix == "" {
		return bad("empty")
	}
	if strings.HasPrefix(suffix, "/") {
		return bad("must be relative to /computeMetadata/v1/")
	}
	for _, r := range suffix {
		if r <= ' ' || r == 0x7f || r >= 0x80 || strings.ContainsRune(`?#%\`, r) {
			return bad("contains a character that is not allowed")
		}
	}
	segs := strings.Split(strings.TrimSuffix(suffix, "/"), "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return bad("empty, . or .. segment")
		}
	}
	return nil
}

// checkKey accepts an attribute key: one path segment.
func checkKey(key string) error {
	if key == "" || strings.Contains(key, "/") {
		return fmt.Errorf("mdclient: invalid attribute key %q", key)
	}
	return checkSuffix(key)
}
