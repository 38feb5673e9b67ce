package mdclient

import (
	"net/http"
	"testing"
	"time"
)

func TestBackoffDelay(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, 5 * time.Second
	tests := []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{attempt: 0, r: 0, want: 50 * time.Millisecond},
		{attempt: 0, r: 0.999999, want: 99999950 * time.Nanosecond},
		{attempt: 1, r: 0, want: 100 * time.Millisecond},
		{attempt: 1, r: 0.5, want: 150 * time.Millisecond},
		{attempt: 3, r: 0, want: 400 * time.Millisecond},
		{attempt: 5, r: 0, want: 1600 * time.Millisecond},
		{attempt: 6, r: 0, want: 2500 * time.Millisecond}, // 6.4 s capped at 5 s
		{attempt: 6, r: 0.999999, want: 4999997500 * time.Nanosecond},
		{attempt: 62, r: 0, want: 2500 * time.Millisecond}, // no overflow
		{attempt: 1 << 30, r: 0, want: 2500 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := backoffDelay(lo, hi, tt.attempt, tt.r); got != tt.want {
			t.Errorf("backoffDelay(%v, %v, %d, %v) = %v, want %v", lo, hi, tt.attempt, tt.r, got, tt.want)
		}
	}
}

func TestBackoffGrowsCapsAndResets(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999999} {
		b := backoff{lo: time.Second, hi: 8 * time.Second, random: func() float64 { return r }}
		prev := time.Duration(0)
		for i, d := range []time.Duration{1, 2, 4, 8, 8, 8} {
			d *= time.Second
			got := b.next()
			if got < d/2 || got >= d || got < prev {
				t.Errorf("r=%v: delay %d = %v, want in [%v, %v) and not below %v", r, i, got, d/2, d, prev)
			}
			prev = got
		}
		b.reset()
		if got := b.next(); got >= time.Second {
			t.Errorf("r=%v: after reset, delay = %v, want under 1s", r, got)
		}
	}
}

func TestRetryBackoffHonoursRetryAfter(t *testing.T) {
	c := New(Config{})
	c.random = func() float64 { return 0 }
	const lo, hi = 100 * time.Millisecond, 5 * time.Second
	resp := func(code int, after string) *http.Response {
		h := http.Header{}
		if after != "" {
			h.Set("Retry-After", after)
		}
		return &http.Response{StatusCode: code, Header: h}
	}
	tests := []struct {
		name string
		resp *http.Response
		want time.Duration
	}{
		{"connection error", nil, 200 * time.Millisecond},
		{"500 ignores Retry-After", resp(500, "3"), 200 * time.Millisecond},
		{"429 with Retry-After", resp(429, "3"), 3 * time.Second},
		{"503 with Retry-After", resp(503, "2"), 2 * time.Second},
		{"Retry-After capped", resp(429, "120"), hi},
		{"Retry-After 0 raised to the minimum", resp(429, "0"), lo},
		{"Retry-After date ignored", resp(503, "Fri, 31 Dec 1999 23:59:59 GMT"), 200 * time.Millisecond},
		{"negative Retry-After ignored", resp(429, "-1"), 200 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := c.retryBackoff(lo, hi, 2, tt.resp); got != tt.want {
			t.Errorf("%s: retryBackoff = %v, want %v", tt.name, got, tt.want)
		}
	}
}
