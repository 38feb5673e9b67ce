package approver

import (
	"time"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/csrs"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

// How long requests are kept, as kube-controller-manager's cleaner does.
const (
	PendingTTL  = 24 * time.Hour
	FinishedTTL = time.Hour
)

// ShouldCollect reports whether a request is old enough to delete at now:
// pending for over 24 h, or issued, denied or failed over 1 h ago, or
// issued with a certificate that has expired.
func ShouldCollect(c *certv1.CertificateSigningRequest, now time.Time) bool {
	created := c.CreationTimestamp.Time
	switch csrpolicy.StateOf(c.Status) {
	case csrpolicy.Pending, csrpolicy.Approved:
		if csrpolicy.StateOf(c.Status) == csrpolicy.Approved {
			if cond := csrpolicy.Condition(c.Status, certv1.CertificateApproved); cond != nil && !now.Before(cond.LastUpdateTime.Add(PendingTTL)) {
				return true
			}
		}
		return !now.Before(created.Add(PendingTTL))
	case csrpolicy.Issued:
		if certs, err := pki.ParseCerts(c.Status.Certificate); err == nil && !now.Before(certs[0].NotAfter) {
			return true
		}
		return finishedBefore(c, certv1.CertificateApproved, now)
	case csrpolicy.Denied:
		return finishedBefore(c, certv1.CertificateDenied, now)
	case csrpolicy.Failed:
		return finishedBefore(c, certv1.CertificateFailed, now)
	}
	return false
}

func finishedBefore(c *certv1.CertificateSigningRequest, t certv1.RequestConditionType, now time.Time) bool {
	at := c.CreationTimestamp.Time
	if cond := csrpolicy.Condition(c.Status, t); cond != nil && !cond.LastUpdateTime.IsZero() {
		at = cond.LastUpdateTime.Time
	}
	return !now.Before(at.Add(FinishedTTL))
}

// Collect deletes the requests ShouldCollect picks at now, and expired
// bootstrap tokens, and returns how many requests it deleted.
func (c *Controller) Collect(now time.Time) (int, error) {
	objs, _ := c.Store.List(csrs.Kind)
	n := 0
	for _, o := range objs {
		csr, err := csrs.View(o)
		if err != nil {
			c.Logger.Error("undecodable request in store", "csr", o.Name, "err", err)
			continue
		}
		if !ShouldCollect(csr, now) {
			continue
		}
		if _, err := csrs.Delete(c.Store, o.Name); err == nil {
			n++
		}
	}
	if n > 0 {
		c.Logger.Info("collected old requests", "count", n)
	}
	if c.Tokens != nil {
		if k, err := c.Tokens.DeleteExpired(now); err != nil {
			return n, err
		} else if k > 0 {
			c.Logger.Info("deleted expired bootstrap tokens", "count", k)
		}
	}
	return n, nil
}
