package agent

import (
	"crypto/x509"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func cert(notBefore time.Time, life time.Duration) *x509.Certificate {
	return &x509.Certificate{NotBefore: notBefore, NotAfter: notBefore.Add(life)}
}

func TestRenewalTimeWindow(t *testing.T) {
	year := 365 * 24 * time.Hour
	tests := []struct {
		name string
		r    float64
		want time.Duration // after NotBefore
	}{
		{"earliest", 0, time.Duration(0.7 * float64(year))},
		{"middle", 0.5, time.Duration(0.8 * float64(year))},
		{"latest", 0.999999, time.Duration(0.9 * float64(year))},
		{"negative jitter clamps", -3, time.Duration(0.7 * float64(year))},
		{"jitter 1 stays below 90%", 1, time.Duration(0.9 * float64(year))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RenewalTime(t0, t0.Add(year), tt.r).Sub(t0)
			if d := got - tt.want; d > time.Minute || d < -time.Minute {
				t.Fatalf("renewal at %v after NotBefore, want %v", got, tt.want)
			}
		})
	}
}

func TestRenewalTimeUsesIssuedValidity(t *testing.T) {
	// A signer that backdates NotBefore by 5 minutes and shortens the
	// lifetime: the schedule follows the certificate, not the request.
	nb := t0.Add(-5 * time.Minute)
	c := cert(nb, time.Hour)
	at := RenewalTime(c.NotBefore, c.NotAfter, 0)
	if want := nb.Add(42 * time.Minute); !at.Equal(want) {
		t.Fatalf("renewal at %v, want %v", at, want)
	}
}

func TestDecide(t *testing.T) {
	day := 24 * time.Hour
	c := cert(t0, 10*day)
	renewAt := RenewalTime(c.NotBefore, c.NotAfter, 0.5) // day 8
	tests := []struct {
		name string
		now  time.Time
		cert *x509.Certificate
		want Action
	}{
		{"no certificate", t0, nil, Bootstrap},
		{"fresh", t0.Add(time.Hour), c, Wait},
		{"just before renewal", renewAt.Add(-time.Second), c, Wait},
		{"at renewal", renewAt, c, Renew},
		{"inside the window", t0.Add(9 * day), c, Renew},
		{"expired: node was off", t0.Add(11 * day), c, Bootstrap},
		{"exactly at NotAfter", c.NotAfter, c, Bootstrap},
		{"clock a little behind NotBefore", t0.Add(-4 * time.Minute), c, Wait},
		{"clock far behind NotBefore: keep it, warn", t0.Add(-time.Hour), c, Wait},
		{"clock jumped forward past expiry", t0.Add(400 * day), c, Bootstrap},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Decide(tt.now, tt.cert, renewAt); got != tt.want {
				t.Fatalf("Decide = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHealthyGoesBadBeforeExpiry(t *testing.T) {
	c := cert(t0, 100*time.Hour)
	tests := []struct {
		name string
		now  time.Time
		want bool
	}{
		{"fresh", t0.Add(time.Hour), true},
		{"in the renewal window", t0.Add(85 * time.Hour), true},
		{"past the window, still valid", t0.Add(91 * time.Hour), false},
		{"expired", t0.Add(101 * time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Healthy(tt.now, c); got != tt.want {
				t.Fatalf("Healthy = %v, want %v", got, tt.want)
			}
		})
	}
	if Healthy(t0, nil) {
		t.Fatal("no certificate reported healthy")
	}
}

func TestClockBehind(t *testing.T) {
	c := cert(t0, time.Hour)
	if d := ClockBehind(t0.Add(-4*time.Minute), c); d != 0 {
		t.Fatalf("within leeway: %v", d)
	}
	if d := ClockBehind(t0.Add(-time.Hour), c); d != time.Hour {
		t.Fatalf("an hour behind: %v", d)
	}
	if ClockBehind(t0, nil) != 0 {
		t.Fatal("nil certificate")
	}
}

func TestBackoffDelayCappedAndJittered(t *testing.T) {
	tests := []struct {
		n    int
		r    float64
		want time.Duration
	}{
		{1, 1, time.Second},
		{1, 0, 500 * time.Millisecond},
		{2, 1, 2 * time.Second},
		{5, 1, 16 * time.Second},
		{8, 1, 2 * time.Minute},
		{100, 1, 2 * time.Minute},
		{100, 0, time.Minute},
		{0, 1, time.Second},
	}
	for _, tt := range tests {
		if got := BackoffDelay(tt.n, tt.r); got != tt.want {
			t.Errorf("BackoffDelay(%d, %v) = %v, want %v", tt.n, tt.r, got, tt.want)
		}
	}
	// An hour of failures costs at most about 60 attempts, never a loop.
	var total time.Duration
	n := 0
	for total < time.Hour {
		n++
		total += BackoffDelay(n, 0)
	}
	if n > 70 {
		t.Fatalf("%d attempts in an hour", n)
	}
}
