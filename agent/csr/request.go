package csr

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/internal/clock"
)

// Request creates the certificate signing request r and returns the issued
// certificate (PEM, the leaf first) once the request is approved and
// signed.
//
// If a request of the same name exists, as after a restart with the same
// key, Request re-attaches to it when it is compatible (same signer,
// subject, SANs and usages, signed by r.Key, neither denied nor failed,
// no expired certificate) and returns ErrIncompatible otherwise.
//
// It then watches the request, watching again when the stream ends and
// polling when the server cannot watch, and returns early with ErrDenied,
// ErrFailed or ErrDeleted. The whole call is bounded by WaitTimeout
// (ErrTimeout) and by ctx. API errors are *APIError; a 401 matches
// ErrUnauthorized and a 403 ErrForbidden. No goroutine outlives the call.
func (c *Client) Request(ctx context.Context, r Request) ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	name := r.Name
	if name == "" {
		var err error
		if name, err = Name(r.Key.Public(), r.Subject, r.Usages); err != nil {
			return nil, err
		}
	}
	csrPEM, err := r.pem()
	if err != nil {
		return nil, err
	}
	w := &waiter{
		c:       c,
		clk:     clock.Or(c.Clock),
		log:     c.logger().With("csr", name),
		name:    name,
		pub:     r.Key.Public(),
		timeout: c.WaitTimeout,
		poll:    c.PollInterval,
	}
	if w.timeout <= 0 {
		w.timeout = DefaultWaitTimeout
	}
	if w.poll <= 0 {
		w.poll = DefaultPollInterval
	}
	ctx, stop := withClockTimeout(ctx, w.clk, w.timeout)
	defer stop()

	cur, err := w.createOrAttach(ctx, &r, csrPEM)
	if err != nil {
		if ctx.Err() != nil {
			return nil, w.ctxErr(ctx)
		}
		return nil, err
	}
	return w.wait(ctx, cur)
}

func (c *Client) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// withClockTimeout returns a context canceled with cause ErrTimeout after d
// on clk. stop releases it and returns after its goroutine has ended.
func withClockTimeout(parent context.Context, clk clock.Clock, d time.Duration) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	t := clk.NewTimer(d)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-t.C():
			cancel(ErrTimeout)
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		t.Stop()
		cancel(context.Canceled)
		<-done
	}
}

// createOrAttach creates the request, or returns the existing one of the
// same name when it is compatible.
func (w *waiter) createOrAttach(ctx context.Context, r *Request, csrPEM []byte) (*certv1.CertificateSigningRequest, error) {
	obj := &certv1.CertificateSigningRequest{
		TypeMeta:   metav1.TypeMeta{APIVersion: "certificates.k8s.io/v1", Kind: "CertificateSigningRequest"},
		ObjectMeta: metav1.ObjectMeta{Name: w.name},
		Spec: certv1.CertificateSigningRequestSpec{
			Request:    csrPEM,
			SignerName: r.SignerName,
			Usages:     r.Usages,
		},
	}
	if r.Duration > 0 {
		s := int32(r.Duration / time.Second)
		obj.Spec.ExpirationSeconds = &s
	}
	// Two rounds: the existing request may be deleted between the create
	// that found it and the read.
	for range 2 {
		created, err := w.c.create(ctx, obj)
		if err == nil {
			w.log.Info("created certificate signing request", "signer", r.SignerName, "uid", created.UID)
			return created, nil
		}
		if statusCode(err) != http.StatusConflict {
			return nil, fmt.Errorf("create certificate signing request %q: %w", w.name, err)
		}
		cur, err := w.c.get(ctx, w.name)
		switch statusCode(err) {
		case 0:
		case http.StatusNotFound:
			continue
		case http.StatusForbidden:
			return nil, fmt.Errorf("%w: %q exists but cannot be read: %w", ErrIncompatible, w.name, err)
		}
		if err != nil {
			return nil, fmt.Errorf("read existing certificate signing request %q: %w", w.name, err)
		}
		if err := compatible(cur, r, w.clk.Now()); err != nil {
			return nil, err
		}
		w.log.Info("re-attached to existing certificate signing request", "signer", r.SignerName, "uid", cur.UID)
		return cur, nil
	}
	return nil, fmt.Errorf("create certificate signing request %q: it exists, then not, twice", w.name)
}

// compatible returns nil when the existing request cur can stand for r, or
// an ErrIncompatible error saying why not.
func compatible(cur *certv1.CertificateSigningRequest, r *Request, now time.Time) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %q: %s", ErrIncompatible, cur.Name, fmt.Sprintf(format, args...))
	}
	if cur.Spec.SignerName != r.SignerName {
		return bad("signer is %q, want %q", cur.Spec.SignerName, r.SignerName)
	}
	if !sameSet(cur.Spec.Usages, r.Usages) {
		return bad("usages are %v, want %v", cur.Spec.Usages, r.Usages)
	}
	blk, _ := pem.Decode(cur.Spec.Request)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return bad("spec.request is not a PEM certificate request")
	}
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return bad("parse spec.request: %v", err)
	}
	if err := req.CheckSignature(); err != nil {
		return bad("spec.request signature: %v", err)
	}
	if !samePublicKey(req.PublicKey, r.Key.Public()) {
		return bad("it is for another key")
	}
	if req.Subject.CommonName != r.Subject.CommonName || !slices.Equal(req.Subject.Organization, r.Subject.Organization) {
		return bad("subject is %q, want %q", req.Subject, r.Subject)
	}
	if !sameSet(req.DNSNames, r.DNSNames) || !sameIPs(req.IPAddresses, r.IPAddresses) {
		return bad("subject alternative names differ")
	}
	if ce := conditionError(cur); ce != nil {
		return fmt.Errorf("%w: %w", ErrIncompatible, ce)
	}
	if len(cur.Status.Certificate) > 0 {
		cert, err := leaf(cur.Status.Certificate, r.Key.Public())
		if err != nil {
			return bad("%v", err)
		}
		if now.After(cert.NotAfter) {
			return bad("its certificate expired at %v", cert.NotAfter.UTC())
		}
	}
	return nil
}

func sameSet[T comparable](a, b []T) bool {
	return !slices.ContainsFunc(a, func(x T) bool { return !slices.Contains(b, x) }) &&
		!slices.ContainsFunc(b, func(x T) bool { return !slices.Contains(a, x) })
}

func sameIPs(a, b []net.IP) bool {
	has := func(s []net.IP, ip net.IP) bool { return slices.ContainsFunc(s, ip.Equal) }
	return !slices.ContainsFunc(a, func(x net.IP) bool { return !has(b, x) }) &&
		!slices.ContainsFunc(b, func(x net.IP) bool { return !has(a, x) })
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// leaf parses the first certificate of a PEM chain and checks that it
// is for pub.
func leaf(chain []byte, pub crypto.PublicKey) (*x509.Certificate, error) {
	rest := chain
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("%w: no PEM certificate", ErrBadCertificate)
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: parse: %v", ErrBadCertificate, err)
		}
		if !samePublicKey(cert.PublicKey, pub) {
			return nil, fmt.Errorf("%w: it is for another key", ErrBadCertificate)
		}
		return cert, nil
	}
}

// condition returns the request's condition of type t, if it holds.
func condition(c *certv1.CertificateSigningRequest, t certv1.RequestConditionType) *certv1.CertificateSigningRequestCondition {
	for i := range c.Status.Conditions {
		cd := &c.Status.Conditions[i]
		if cd.Type == t && cd.Status != "False" {
			return cd
		}
	}
	return nil
}

// conditionError returns a *ConditionError if c is denied or failed.
func conditionError(c *certv1.CertificateSigningRequest) error {
	for _, t := range []certv1.RequestConditionType{certv1.CertificateDenied, certv1.CertificateFailed} {
		if cd := condition(c, t); cd != nil {
			return &ConditionError{Name: c.Name, Type: t, Reason: cd.Reason, Message: cd.Message}
		}
	}
	return nil
}
