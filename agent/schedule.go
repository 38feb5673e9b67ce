package agent

import (
	"crypto/x509"
	"time"
)

// Renewal window: a credential is renewed at a random point between these
// fractions of its issued lifetime, as the kubelet does, so a fleet issued
// at once does not renew at once.
const (
	renewFrom  = 0.7
	renewUntil = 0.9
)

// Clock-skew leeway: a certificate whose NotBefore is at most this far in
// the future is usable (signers backdate by 5 minutes; a node clock that
// runs a little fast must not reject a fresh certificate).
const skewLeeway = 5 * time.Minute

// RenewalTime returns when a certificate valid from notBefore to notAfter
// should be renewed, for a jitter r in [0,1): at renewFrom + r*(renewUntil
// - renewFrom) of its lifetime. It depends only on the issued validity,
// never on what was requested.
func RenewalTime(notBefore, notAfter time.Time, r float64) time.Time {
	if r < 0 {
		r = 0
	}
	if r >= 1 {
		r = 0.999999
	}
	life := notAfter.Sub(notBefore)
	frac := renewFrom + r*(renewUntil-renewFrom)
	return notBefore.Add(time.Duration(float64(life) * frac))
}

// Action is what to do about a credential now.
type Action int

// The actions Decide returns.
const (
	// Wait: the credential is good until its renewal time.
	Wait Action = iota
	// Renew: renew, authenticated by the current certificate.
	Renew
	// Bootstrap: there is no usable certificate (none, corrupt or
	// expired); start over from the bootstrap secret in metadata.
	Bootstrap
)

func (a Action) String() string {
	switch a {
	case Renew:
		return "renew"
	case Bootstrap:
		return "bootstrap"
	}
	return "wait"
}

// Decide says what to do with cert (nil: none or unusable) at now, given
// its planned renewal time. A certificate that is not valid yet by the
// local clock is kept (Wait): the servers judge it by theirs, and a new
// one would look the same; ClockBehind tells the operator.
func Decide(now time.Time, cert *x509.Certificate, renewAt time.Time) Action {
	switch {
	case cert == nil:
		return Bootstrap
	case !now.Before(cert.NotAfter):
		return Bootstrap
	case !now.Before(renewAt):
		return Renew
	}
	return Wait
}

// ClockBehind returns how far the local clock is behind a certificate's
// NotBefore beyond the skew leeway signers allow for, or 0. A non-zero
// value means this node's clock is wrong.
func ClockBehind(now time.Time, cert *x509.Certificate) time.Duration {
	if cert == nil || !now.Add(skewLeeway).Before(cert.NotBefore) {
		return 0
	}
	return cert.NotBefore.Sub(now)
}

// Healthy reports whether a credential is healthy at now: it exists and
// has not passed the end of its renewal window. A credential that is still
// valid but past renewUntil of its lifetime means renewal keeps failing,
// and the node must be reported unhealthy before the certificate expires,
// not after.
func Healthy(now time.Time, cert *x509.Certificate) bool {
	if cert == nil || !now.Before(cert.NotAfter) {
		return false
	}
	return now.Before(RenewalTime(cert.NotBefore, cert.NotAfter, 1))
}
