package agent

import (
	"crypto/x509"
	"encoding/hex"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/agent/certstore"
)

// The signers of the two kubelet credentials.
const (
	signerClient  = "kubernetes.io/kube-apiserver-client-kubelet"
	signerServing = "kubernetes.io/kubelet-serving"
)

// credential is one certificate the agent keeps valid, with what it
// remembers about it.
type credential struct {
	name     string
	signer   string
	duration time.Duration
	store    *certstore.Store

	mu          sync.Mutex
	pair        *certstore.Pair
	renewAt     time.Time
	lastSuccess time.Time
	lastErr     error
	lastErrAt   time.Time
	failures    int
	retry       time.Time // no attempt before this (backoff)
	rotations   int
	// reissued is the trust-bundle generation this certificate was last
	// re-issued for (because the active CA had not issued it), so a
	// signer still on the old CA cannot make the agent loop.
	reissued uint64

	firstOnce sync.Once
	first     chan struct{} // closed once the credential holds a certificate
}

// held returns a channel closed once the credential first holds a
// certificate.
func (c *credential) held() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first == nil {
		c.first = make(chan struct{})
	}
	return c.first
}

func (c *credential) reissuedFor() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reissued
}

func (c *credential) setReissued(gen uint64) {
	c.mu.Lock()
	c.reissued = gen
	c.mu.Unlock()
}

func (c *credential) current() *certstore.Pair {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pair
}

// set records a loaded or newly issued pair and plans its renewal.
func (c *credential) set(p *certstore.Pair, jitter float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pair != nil && p != nil && c.pair.Cert.Equal(p.Cert) {
		return // same certificate: keep its plan
	}
	c.pair = p
	if p != nil {
		c.renewAt = RenewalTime(p.Cert.NotBefore, p.Cert.NotAfter, jitter)
		if c.first == nil {
			c.first = make(chan struct{})
		}
		c.firstOnce.Do(func() { close(c.first) })
	}
}

func (c *credential) plannedRenewal() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.renewAt
}

// succeeded records an obtained certificate.
func (c *credential) succeeded(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastSuccess, c.lastErr, c.failures, c.retry = now, nil, 0, time.Time{}
	c.rotations++
}

// fail records a failed attempt and returns the delay before the next.
func (c *credential) fail(now time.Time, err error, backoff func(int) time.Duration) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures++
	c.lastErr, c.lastErrAt = err, now
	d := backoff(c.failures)
	c.retry = now.Add(d)
	return d
}

func (c *credential) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

func (c *credential) retryAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retry
}

// nextDue is when this credential next needs attention.
func (c *credential) nextDue() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lastErr != nil {
		return c.retry
	}
	if c.pair == nil {
		return time.Time{}
	}
	return minTime(c.renewAt, c.pair.Cert.NotAfter)
}

// settled reports whether the credential holds a certificate and has
// nothing to do at now.
func (c *credential) settled(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pair != nil && c.lastErr == nil && Decide(now, c.pair.Cert, c.renewAt) == Wait
}

func (c *credential) secondsLeft(now time.Time) float64 {
	p := c.current()
	if p == nil {
		return -1e9
	}
	return p.Cert.NotAfter.Sub(now).Seconds()
}

func (c *credential) secondsToRenewal(now time.Time) float64 {
	if c.current() == nil {
		return 0
	}
	return c.plannedRenewal().Sub(now).Seconds()
}

// statusAt describes the credential for the status file.
func (c *credential) statusAt(now time.Time) CredentialStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := CredentialStatus{Name: c.name, Path: c.store.CurrentPath(), LastSuccess: c.lastSuccess,
		LastErrorAt: c.lastErrAt, Failures: c.failures, Rotations: c.rotations}
	if c.lastErr != nil {
		s.LastError = c.lastErr.Error()
	}
	if c.pair == nil {
		s.State = "none yet"
		if c.lastErr != nil {
			s.State = "none yet; obtaining it keeps failing"
		}
		return s
	}
	cert := c.pair.Cert
	s.Subject, s.Issuer = cert.Subject.String(), cert.Issuer.String()
	s.Serial = hex.EncodeToString(cert.SerialNumber.Bytes())
	s.DNSNames = cert.DNSNames
	for _, ip := range cert.IPAddresses {
		s.IPs = append(s.IPs, ip.String())
	}
	s.NotBefore, s.NotAfter, s.NextRotation = cert.NotBefore, cert.NotAfter, c.renewAt
	s.Healthy = Healthy(now, cert)
	switch {
	case !now.Before(cert.NotAfter):
		s.State = "EXPIRED; re-bootstrapping from metadata"
	case !s.Healthy:
		s.State = "valid but overdue for renewal, which keeps failing"
	case !now.Before(c.renewAt):
		s.State = "valid, renewing now"
	default:
		s.State = "valid"
	}
	if d := ClockBehind(now, cert); d > 0 {
		s.State += "; this node's clock is " + d.Round(time.Second).String() + " behind the certificate's start"
	}
	return s
}

// certOf returns the certificate of a pair, or nil.
func certOf(p *certstore.Pair) *x509.Certificate {
	if p == nil {
		return nil
	}
	return p.Cert
}
