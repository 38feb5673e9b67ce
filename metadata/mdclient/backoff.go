package mdclient

import (
	"strconv"
	"strings"
	"time"
)

// backoffDelay is the capped, jittered exponential delay before retry
// attempt+1 (attempt counts from 0): d = min(lo·2^attempt, hi), then a
// point in [d/2, d) chosen by r, a random number in [0, 1). The lower half
// keeps delays growing; the upper half spreads clients apart.
func backoffDelay(lo, hi time.Duration, attempt int, r float64) time.Duration {
	d := hi
	if attempt >= 0 && attempt < 62 {
		if e := lo << attempt; e > 0 && e>>attempt == lo && e < hi {
			d = e
		}
	}
	half := d / 2
	return half + time.Duration(r*float64(d-half))
}

// retryAfter parses a Retry-After header given in seconds. The HTTP-date
// form is not used by metadata servers and is ignored.
func retryAfter(h string) (time.Duration, bool) {
	s, err := strconv.ParseInt(strings.TrimSpace(h), 10, 32)
	if err != nil || s < 0 {
		return 0, false
	}
	return time.Duration(s) * time.Second, true
}

// backoff counts consecutive failures of Watch's polls.
type backoff struct {
	lo, hi  time.Duration
	random  func() float64
	attempt int
}

// next returns the delay before the next try and counts a failure.
func (b *backoff) next() time.Duration {
	d := backoffDelay(b.lo, b.hi, b.attempt, b.random())
	if b.attempt < 62 {
		b.attempt++
	}
	return d
}

// reset forgets past failures, after a success.
func (b *backoff) reset() { b.attempt = 0 }
