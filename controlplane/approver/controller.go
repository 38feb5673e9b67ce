package approver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/csrs"
	"github.com/nodetrust/nodetrust/controlplane/instances"
	"github.com/nodetrust/nodetrust/controlplane/signer"
	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/controlplane/tokens"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// ErrSignerRejected must be wrapped by a Signer's error when it refused
// the request on its merits; the request is then marked Failed.
var ErrSignerRejected = signer.ErrRejected

// Signer signs an approved request and returns the certificate PEM.
type Signer interface {
	Sign(ctx context.Context, c *certv1.CertificateSigningRequest) ([]byte, error)
}

// Controller approves, signs and collects requests.
type Controller struct {
	Store    *store.Store
	Registry *instances.Registry
	Signer   Signer
	Tokens   *tokens.Manager // expired tokens are collected when set
	Clock    clock.Clock
	Logger   *slog.Logger
	// Workers is how many requests are handled at once; 0 means 128. Each
	// waits for the signer and for its write to be durable (an fsync), so
	// throughput is about Workers / (fsync + signing latency).
	Workers int
	// GCInterval is how often old requests are collected; 0 means 1 h.
	GCInterval time.Duration
	// OnIssued, when set, is called after a certificate was stored for a
	// request.
	OnIssued func(csr *certv1.CertificateSigningRequest, certPEM []byte)

	q queue
}

// Run handles requests until ctx is done and returns after its
// goroutines have ended.
func (c *Controller) Run(ctx context.Context) error {
	c.Clock = clock.Or(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Workers <= 0 {
		c.Workers = 128
	}
	if c.GCInterval <= 0 {
		c.GCInterval = time.Hour
	}
	c.q.init()
	objs, rv := c.Store.List(csrs.Kind)
	w, err := c.Store.Watch(csrs.Kind, "", rv)
	if err != nil {
		return fmt.Errorf("watch requests: %w", err)
	}
	for _, o := range objs {
		c.q.add(o.Name)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		defer c.q.shutdown()
		defer func() { w.Stop() }()
		for {
			ev, err := w.Next(ctx)
			if err != nil {
				if ctx.Err() == nil {
					c.Logger.Error("request watch ended; restarting the controller's watch", "err", err)
					// Re-list: events may have been missed.
					objs, rv := c.Store.List(csrs.Kind)
					if w, err = c.Store.Watch(csrs.Kind, "", rv); err != nil {
						cancel()
						return
					}
					for _, o := range objs {
						c.q.add(o.Name)
					}
					continue
				}
				return
			}
			// Issued requests need nothing more; skip them without decoding.
			if ev.Type != store.Deleted && !issued(ev.Data) {
				c.q.add(ev.Name)
			}
		}
	})
	for range c.Workers {
		wg.Go(func() {
			for {
				name, ok := c.q.get()
				if !ok {
					return
				}
				retry := c.handle(ctx, name)
				c.q.done(name)
				if retry > 0 {
					wg.Go(func() { c.requeueAfter(ctx, name, retry) })
				}
			}
		})
	}
	wg.Go(func() {
		t := c.Clock.NewTicker(c.GCInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C():
				if _, err := c.Collect(c.Clock.Now()); err != nil {
					c.Logger.Error("collect old requests", "err", err)
				}
			}
		}
	})
	wg.Wait()
	return nil
}

func (c *Controller) requeueAfter(ctx context.Context, name string, d time.Duration) {
	t := c.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C():
		c.q.add(name)
	}
}

const retryDelay = 2 * time.Second

// issued reports, without decoding, whether a stored request's JSON has a
// status.certificate. Only the status object is opened with "status":{ (the
// values of user-set maps are strings or lists) and its only keys are
// conditions and certificate.
func issued(data []byte) bool {
	i := bytes.LastIndex(data, []byte(`"status":{`))
	return i >= 0 && bytes.Contains(data[i:], []byte(`"certificate":"`))
}

// handle moves one request forward; it returns a delay after which to try
// again, or 0.
func (c *Controller) handle(ctx context.Context, name string) time.Duration {
	csr, err := csrs.Get(c.Store, name)
	if err != nil {
		return 0 // deleted meanwhile
	}
	var d *Decision
	if csrpolicy.StateOf(csr.Status) == csrpolicy.Pending {
		dec := Decide(csr, c.Registry)
		switch dec.Action {
		case Leave:
			return 0
		case Deny:
			if _, err := c.setCondition(name, dec); err != nil {
				c.Logger.Error("record decision", "csr", name, "action", dec.Action.String(), "err", err)
				return retryDelay
			}
			c.Logger.Info("denied request", "csr", name, "reason", dec.Reason, "message", dec.Message)
			return 0
		}
		// Approve: ask the signer with the approval in hand, and store the
		// approval and the certificate in one write. If the signer cannot
		// be reached, the approval is stored alone and signing retried.
		d = &dec
		csr.Status.Conditions = append(csr.Status.Conditions, c.condition(certv1.CertificateApproved, dec))
	}
	if csrpolicy.StateOf(csr.Status) != csrpolicy.Approved || !csrpolicy.Served(csr.Spec.SignerName) {
		return 0
	}
	pemCert, err := c.Signer.Sign(ctx, csr)
	if err != nil && !errors.Is(err, ErrSignerRejected) {
		if d != nil {
			if _, serr := c.setCondition(name, *d); serr != nil {
				c.Logger.Error("record approval", "csr", name, "err", serr)
			}
		}
		if ctx.Err() != nil {
			return 0
		}
		c.Logger.Error("sign request", "csr", name, "err", err)
		return retryDelay
	}
	stored, uerr := csrs.Update(c.Store, name, func(cur *certv1.CertificateSigningRequest) error {
		st := csrpolicy.StateOf(cur.Status)
		if d != nil && st != csrpolicy.Pending || d == nil && st != csrpolicy.Approved {
			return fmt.Errorf("request %q changed state while being signed", name)
		}
		if d != nil {
			cur.Status.Conditions = append(cur.Status.Conditions, c.condition(certv1.CertificateApproved, *d))
		}
		if err != nil {
			cur.Status.Conditions = append(cur.Status.Conditions, c.condition(certv1.CertificateFailed, Decision{Reason: "SignerValidationFailure", Message: err.Error()}))
			return nil
		}
		cur.Status.Certificate = pemCert
		return nil
	})
	switch {
	case uerr != nil:
		c.Logger.Warn("store certificate", "csr", name, "err", uerr)
	case err != nil:
		c.Logger.Warn("signer refused request", "csr", name, "err", err)
	case d != nil:
		c.Logger.Debug("approved and issued", "csr", name, "reason", d.Reason)
	}
	if uerr == nil && err == nil && c.OnIssued != nil {
		c.OnIssued(stored, pemCert)
	}
	return 0
}

func (c *Controller) condition(t certv1.RequestConditionType, d Decision) certv1.CertificateSigningRequestCondition {
	now := metav1.NewTime(c.Clock.Now())
	return certv1.CertificateSigningRequestCondition{
		Type: t, Status: "True", Reason: d.Reason, Message: d.Message,
		LastUpdateTime: now, LastTransitionTime: now,
	}
}

// setCondition adds the decision's condition (Approved or Denied, or the
// type given) if the request is still pending or approved-unsigned.
func (c *Controller) setCondition(name string, d Decision, typ ...certv1.RequestConditionType) (*certv1.CertificateSigningRequest, error) {
	t := certv1.CertificateApproved
	if d.Action == Deny {
		t = certv1.CertificateDenied
	}
	if len(typ) > 0 {
		t = typ[0]
	}
	return csrs.Update(c.Store, name, func(cur *certv1.CertificateSigningRequest) error {
		st := csrpolicy.StateOf(cur.Status)
		if t == certv1.CertificateFailed && st != csrpolicy.Approved || t != certv1.CertificateFailed && st != csrpolicy.Pending {
			return fmt.Errorf("request %q is no longer waiting for a %s condition", name, t)
		}
		cur.Status.Conditions = append(cur.Status.Conditions, c.condition(t, d))
		return nil
	})
}
