package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nodetrust/nodetrust/agent/certstore"
	"github.com/nodetrust/nodetrust/agent/csr"
	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/internal/atomicfile"
)

// TrustBundlePath is where the control plane publishes the cluster's trust
// bundle (docs/rotation.md). A stock kube-apiserver answers 404: the agent
// then keeps its roots and does nothing rotation-related.
const TrustBundlePath = "/api/v1/namespaces/kube-public/configmaps/nodetrust-trust-bundle"

// errNoBundle means the API publishes no trust bundle (404).
var errNoBundle = errors.New("the API publishes no trust bundle (404)")

// trust is the agent's view of the published trust bundle.
type trust struct {
	// wake makes the credential loop run a round now; poke makes the
	// trust loop poll now. Both hold at most one signal.
	wake, poke chan struct{}

	// files serializes writes of ca.crt and the kubeconfig, which the
	// credential and trust loops both make.
	files sync.Mutex

	mu sync.Mutex // guards the fields below
	// bundle is the last bundle accepted from the API (nil: none yet, or
	// a stock API without one).
	bundle    *Bundle
	lastErr   error
	failures  int
	checked   bool // a read was tried
	published bool // the last answer was a bundle, not 404
	lastCheck time.Time
	// rejected is the client certificate the API refused at the TLS or
	// HTTP level (nil: none): while it is the current one, rounds
	// bootstrap from metadata.
	rejected *x509.Certificate
}

func newTrust() *trust {
	return &trust{wake: make(chan struct{}, 1), poke: make(chan struct{}, 1)}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// current returns the last accepted bundle, or nil.
func (t *trust) current() *Bundle {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bundle
}

// isRejected reports whether the API refused cert.
func (t *trust) isRejected(cert *x509.Certificate) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return cert != nil && t.rejected != nil && t.rejected.Equal(cert)
}

// setRejected records that the API refused cert (nil: clears).
func (t *trust) setRejected(cert *x509.Certificate) {
	t.mu.Lock()
	t.rejected = cert
	t.mu.Unlock()
}

// TrustBundle returns the trust bundle the agent last accepted from the
// API, or nil.
func (a *Agent) TrustBundle() *Bundle { return a.trust.current() }

// status describes the trust bundle for the status file (nil before the
// first check).
func (t *trust) status() *TrustStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.checked {
		return nil
	}
	s := &TrustStatus{Published: t.published && t.bundle != nil, LastCheck: t.lastCheck}
	if t.lastErr != nil {
		s.LastError = t.lastErr.Error()
	}
	if b := t.bundle; b != nil {
		s.Generation, s.Phase, s.ActiveCA = b.Generation, b.Phase, b.ActivePin
		for _, r := range b.Roots {
			s.Roots = append(s.Roots, r.Subject.String()+" "+bootstrap.SPKIPin(r))
		}
	}
	return s
}

// runTrust polls the trust bundle every trust.checkInterval (jittered)
// until ctx is done, and at once when poked (a new client certificate).
func (a *Agent) runTrust(ctx context.Context) {
	for {
		d := a.pollTrust(ctx)
		t := a.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		case <-a.trust.poke:
			t.Stop()
		}
	}
}

// trustInterval is trust.checkInterval jittered to 80-120%, so a fleet
// does not poll in step.
func (a *Agent) trustInterval() time.Duration {
	return time.Duration(float64(a.cfg.Trust.CheckInterval) * (0.8 + 0.4*a.rand()))
}

// pollTrust makes one poll and acts on it; it returns when to poll next.
func (a *Agent) pollTrust(ctx context.Context) time.Duration {
	cur := a.client.current()
	if cur == nil {
		return a.trustInterval() // poked once a client certificate is held
	}
	caPEM, roots, err := a.readCA()
	if err != nil {
		return a.trustFailed(err)
	}
	data, chain, err := a.getTrustBundle(ctx, cur.TLS, roots)
	switch {
	case err == nil:
		a.m.trustChecks.WithLabelValues("ok").Inc()
	case errors.Is(err, errNoBundle):
		a.m.trustChecks.WithLabelValues("not_published").Inc()
	case ctx.Err() == nil:
		a.m.trustChecks.WithLabelValues("failed").Inc()
	}
	a.trust.mu.Lock()
	a.trust.checked, a.trust.lastCheck = true, a.clock.Now()
	if err == nil || errors.Is(err, errNoBundle) {
		a.trust.published = err == nil
	}
	a.trust.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		return 0
	case err == nil:
		if a.trust.isRejected(cur.Cert) {
			a.trust.setRejected(nil) // the API accepts the certificate again
		}
		if err := a.applyBundle(data, chain, caPEM, cur.Cert); err != nil {
			return a.trustFailed(err)
		}
	case errors.Is(err, errNoBundle):
		a.log.Debug("no trust bundle published; keeping the current cluster roots", "path", TrustBundlePath)
	case unknownAuthority(err):
		// The control plane's servers present certificates of a CA this
		// node does not know yet: the cluster CA was rotated while this
		// node was off.
		a.log.Warn("the stored cluster CA bundle does not verify the API server; the cluster CA was rotated while this node was away: reading the CA bundle from metadata",
			"ca_file", a.caPath, "err", err)
		changed, rerr := a.rootsFromMetadata(ctx, caPEM)
		if rerr != nil {
			return a.trustFailed(fmt.Errorf("the API server is not verified by the stored CA bundle (%w), and reading it again from metadata failed: %w", err, rerr))
		}
		if !changed {
			return a.trustFailed(fmt.Errorf("the API server is not verified by the stored CA bundle nor by the one in metadata (same): %w", err))
		}
		return 0 // poll again now with the new roots
	case clientRejected(err):
		a.log.Warn("the API rejects this node's client certificate (its CA is no longer trusted); bootstrapping from metadata",
			"issuer", cur.Cert.Issuer.String(), "err", err)
		a.trust.setRejected(cur.Cert)
		signal(a.trust.wake)
		return a.trustFailed(err)
	default:
		return a.trustFailed(err)
	}
	a.trust.mu.Lock()
	a.trust.lastErr, a.trust.failures = nil, 0
	a.trust.mu.Unlock()
	return a.trustInterval()
}

// trustFailed records a failed poll and returns the backoff delay, never
// more than the poll interval.
func (a *Agent) trustFailed(err error) time.Duration {
	a.trust.mu.Lock()
	a.trust.failures++
	n := a.trust.failures
	a.trust.lastErr = err
	a.trust.mu.Unlock()
	d := min(a.backoff(n), a.trustInterval())
	a.log.Warn("trust bundle check failed; will retry", "retry_in", d.Round(time.Millisecond), "err", err)
	return d
}

// getTrustBundle GETs the trust-bundle ConfigMap with the client
// certificate and roots, and returns its data and the server's chain.
func (a *Agent) getTrustBundle(ctx context.Context, cert *tls.Certificate, roots *x509.CertPool) (map[string]string, []*x509.Certificate, error) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, Time: a.clock.Now,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(a.cfg.Server, "/")+TrustBundlePath, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "nodetrust-agent")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, csr.MaxResponse))
	if err != nil {
		return nil, nil, fmt.Errorf("read trust bundle: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil, errNoBundle
	case http.StatusUnauthorized:
		return nil, nil, fmt.Errorf("GET %s: %w", TrustBundlePath, csr.ErrUnauthorized)
	default:
		return nil, nil, fmt.Errorf("GET %s: HTTP %d: %.200s", TrustBundlePath, resp.StatusCode, body)
	}
	a.contact()
	var cm corev1.ConfigMap
	if err := json.Unmarshal(body, &cm); err != nil {
		return nil, nil, fmt.Errorf("%w: not a ConfigMap: %w", ErrBundle, err)
	}
	var chain []*x509.Certificate
	if resp.TLS != nil {
		chain = resp.TLS.PeerCertificates
	}
	return cm.Data, chain, nil
}

// applyBundle switches to a newly published bundle when it is acceptable:
// it replaces <stateDir>/ca.crt (so Roots, the tunnels and the kubelet's
// kubeconfig trust every root of it) and wakes the credential loop when a
// certificate was not issued by the active CA.
func (a *Agent) applyBundle(data map[string]string, chain []*x509.Certificate, caPEM []byte, clientCert *x509.Certificate) error {
	b, err := ParseBundle(data)
	if err != nil {
		return err
	}
	prev := a.trust.current()
	if prev != nil && b.Generation < prev.Generation {
		a.log.Debug("older trust bundle ignored", "generation", b.Generation, "have", prev.Generation)
		return nil
	}
	now := a.clock.Now()
	if err := AcceptBundle(now, clientCert, chain, b); err != nil {
		return err
	}
	if !bytes.Equal(caPEM, b.PEM) {
		if err := a.writeRoots(b.PEM); err != nil {
			return err
		}
		a.log.Info("trust bundle updated", "generation", b.Generation, "phase", b.Phase, "active_ca", b.ActivePin, "roots", len(b.Roots))
	}
	a.trust.mu.Lock()
	a.trust.bundle = b
	a.trust.mu.Unlock()
	for _, c := range a.creds {
		if p := c.current(); p != nil && Reissue(now, p.Cert, b) && c.reissuedFor() != b.Generation {
			a.log.Info("certificate not issued by the active cluster CA; re-issuing it now", "credential", c.name,
				"issuer", p.Cert.Issuer.String(), "active_ca", b.ActivePin, "phase", b.Phase)
			signal(a.trust.wake)
		}
	}
	return nil
}

// rootsFromMetadata re-reads the CA bundle from metadata (the bootstrap
// source) and installs it when it differs from caPEM; it reports whether
// it changed.
func (a *Agent) rootsFromMetadata(ctx context.Context, caPEM []byte) (bool, error) {
	b, source, err := a.boot.CABundle(ctx)
	if err != nil {
		return false, err
	}
	if bytes.Equal(b, caPEM) {
		return false, nil
	}
	if err := a.writeRoots(b); err != nil {
		return false, err
	}
	a.log.Info("cluster CA bundle replaced by the one in metadata", "source", source, "ca_file", a.caPath)
	return true, nil
}

// writeRoots replaces ca.crt with caPEM (unless it holds that already)
// and, once there is a client certificate, rewrites the kubeconfig.
func (a *Agent) writeRoots(caPEM []byte) error {
	a.trust.files.Lock()
	defer a.trust.files.Unlock()
	if old, err := os.ReadFile(a.caPath); err != nil || !bytes.Equal(old, caPEM) {
		if err := atomicfile.Write(a.caPath, caPEM, 0o644); err != nil {
			return fmt.Errorf("%w: write %s: %w", errStore, a.caPath, err)
		}
	}
	return a.writeKubeconfigLocked()
}

// writeKubeconfig rewrites the kubelet's kubeconfig with the CA bundle
// in ca.crt now.
func (a *Agent) writeKubeconfig() error {
	a.trust.files.Lock()
	defer a.trust.files.Unlock()
	return a.writeKubeconfigLocked()
}

func (a *Agent) writeKubeconfigLocked() error {
	if a.client.current() == nil {
		return nil
	}
	caPEM, _, err := a.readCA()
	if err != nil {
		return err
	}
	if err := certstore.WriteKubeconfig(a.cfg.Kubeconfig, a.cfg.Server, caPEM, a.client.store.CurrentPath(), a.client.store.CurrentPath()); err != nil {
		return fmt.Errorf("%w: %w", errStore, err)
	}
	return nil
}

// unknownAuthority reports whether err is a server certificate this node's
// roots do not verify.
func unknownAuthority(err error) bool {
	if err == nil {
		return false
	}
	var ua x509.UnknownAuthorityError
	var cv *tls.CertificateVerificationError
	if errors.As(err, &ua) {
		return true
	}
	return errors.As(err, &cv) && errors.As(cv.Err, &ua)
}

// clientRejected reports whether the API refused the client certificate:
// HTTP 401, or a TLS alert the server sends when the certificate does not
// verify against its client CAs (Go's crypto/tls exposes remote alerts
// only through their text).
func clientRejected(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, csr.ErrUnauthorized) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "remote error: tls: bad certificate") ||
		strings.Contains(s, "remote error: tls: unknown certificate authority") ||
		strings.Contains(s, "remote error: tls: certificate required")
}

// idleOrWake is idle, cut short when the trust loop asks for a round now
// (a certificate must be re-issued under the active CA). It returns false
// only when ctx is done.
func (a *Agent) idleOrWake(ctx context.Context, next time.Time) bool {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-a.trust.wake:
			cancel()
		case <-stop:
		}
	}()
	a.idle(wctx, next)
	close(stop)
	<-done
	return ctx.Err() == nil
}
