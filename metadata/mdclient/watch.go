package mdclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
)

// Watch follows the value at suffix (see Get) until ctx is done, fn fails
// or the value is not defined.
//
// It first reads the value and its ETag with a plain GET and calls fn.
// Then it long-polls suffix?wait_for_change=true&last_etag=<etag>&timeout_sec=<n>
// (n from Config.WatchTimeout) and calls fn again each time the ETag
// changes, never for an unchanged one. Calls to fn are sequential, on the
// goroutine that called Watch. No change is lost between polls: the server
// answers at once when last_etag is stale.
//
// Failures do not end the watch: a connection error, a 5xx or other
// unexpected status, a missing ETag, an answer that is not from a metadata
// server, or an unchanged ETag returned well before the timeout (a server
// that does not hang) each wait a capped, jittered, exponentially growing
// delay on Config.Clock (Config.WatchBackoffMin to WatchBackoffMax) before
// the next request, and a success resets the delay. Such a failure is
// logged; the value never is.
//
// Watch returns:
//   - ctx.Err() when ctx is done, promptly, even mid-poll or mid-backoff;
//   - fn's error, unchanged, when fn fails;
//   - an error wrapping ErrNotDefined (a *StatusError) when the server
//     answers 404, at the first read or later: the value is not defined,
//     or was deleted. As with Google's own Subscribe, a deleted value ends
//     the watch; a caller that waits for a value to appear calls Watch
//     again after its own delay;
//   - a configuration error (invalid suffix or host) at once.
func (c *Client) Watch(ctx context.Context, suffix string, fn func(value, etag string) error) error {
	return c.watch(ctx, suffix, nil, fn)
}

// WatchRecursive is Watch on a directory (suffix ends in "/") with
// recursive=true: fn receives the whole subtree as JSON, again whenever
// anything in it changes.
func (c *Client) WatchRecursive(ctx context.Context, suffix string, fn func(value, etag string) error) error {
	if !strings.HasSuffix(suffix, "/") {
		return fmt.Errorf("mdclient: WatchRecursive needs a directory, %q does not end in /", suffix)
	}
	return c.watch(ctx, suffix, url.Values{"recursive": {"true"}}, fn)
}

func (c *Client) watch(ctx context.Context, suffix string, base url.Values, fn func(value, etag string) error) error {
	if c.hostErr != nil {
		return c.hostErr
	}
	if err := checkSuffix(suffix); err != nil {
		return err
	}
	if fn == nil {
		return errors.New("mdclient: Watch needs a callback")
	}
	w := watch{
		c:   c,
		log: c.logger.With(keyPath, suffix),
		bo:  backoff{lo: c.watchBackoffMin, hi: c.watchBackoffMax, random: c.random},
	}

	// The first read: no wait, so the caller gets the current value now.
	var etag string
	for {
		value, e, err := c.get(ctx, c.plain, suffix, base)
		if err == nil && e == "" {
			err = fmt.Errorf("get %s from %s: no ETag in the answer, cannot watch", suffix, c.host)
		}
		if err == nil {
			etag = e
			w.bo.reset()
			if err := fn(value, etag); err != nil {
				return err
			}
			break
		}
		if err := w.pause(ctx, err, slog.LevelWarn); err != nil {
			return err
		}
	}

	// The long polls.
	q := url.Values{}
	for k, v := range base {
		q[k] = v
	}
	q.Set("wait_for_change", "true")
	q.Set("timeout_sec", strconv.Itoa(int(c.watchTimeout.Seconds())))
	for {
		q.Set("last_etag", etag)
		start := c.clock.Now()
		value, e, err := c.get(ctx, c.long, suffix, q)
		level := slog.LevelWarn
		switch {
		case err != nil:
		case e == "":
			err = fmt.Errorf("watch %s on %s: no ETag in the answer", suffix, c.host)
		case e == etag && c.clock.Now().Sub(start) >= c.watchTimeout/2:
			// The server hung until its timeout: no change, all is well.
			w.bo.reset()
			continue
		case e == etag:
			// Answered at once with no change: back off rather than spin.
			err = fmt.Errorf("watch %s on %s: unchanged ETag answered before the timeout", suffix, c.host)
			level = slog.LevelDebug
		default:
			etag = e
			w.bo.reset()
			w.log.Debug("metadata value changed")
			if err := fn(value, etag); err != nil {
				return err
			}
			continue
		}
		if err := w.pause(ctx, err, level); err != nil {
			return err
		}
	}
}

// watch is the state of one Watch call.
type watch struct {
	c   *Client
	log *slog.Logger
	bo  backoff
}

// pause handles a failed request: it returns the error that ends the watch
// (ctx done, or the value not defined), or waits out the next backoff delay
// on the client's clock and returns nil.
func (w *watch) pause(ctx context.Context, cause error, level slog.Level) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if errors.Is(cause, ErrNotDefined) {
		return cause // a *StatusError, which names the path
	}
	d := w.bo.next()
	w.log.Log(ctx, level, "metadata watch request failed; backing off",
		keyError, cause, keyRetryIn, d, keyFailures, w.bo.attempt)
	t := w.c.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}
