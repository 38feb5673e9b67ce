package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/agent/certstore"
	"github.com/nodetrust/nodetrust/agent/csr"
	"github.com/nodetrust/nodetrust/agent/nodeaddr"
	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// ensure brings one credential up to date: it loads what is on disk and
// bootstraps, renews or does nothing, as Decide says.
func (a *Agent) ensure(ctx context.Context, c *credential) error {
	now := a.clock.Now()
	p, err := c.store.Current()
	switch {
	case errors.Is(err, certstore.ErrNoCredential):
		p = nil
	case err != nil:
		// Garbage, truncated, or a key that does not match: start over.
		a.log.Warn("stored certificate unusable; obtaining a new one", "credential", c.name, "err", err)
		p = nil
	}
	c.set(p, a.rand())
	if d := ClockBehind(now, certOf(p)); d > 0 {
		a.log.Error("this node's clock is behind its certificate's start; fix the clock (NTP)", "credential", c.name, "behind", d.Round(time.Second))
	}
	action := Decide(now, certOf(p), c.plannedRenewal())
	if c == a.serving && action == Wait && !a.servingNamesCovered(ctx, p.Cert) {
		action = Renew // the node's addresses changed
	}
	var reissueFor uint64
	if b := a.trust.current(); action == Wait && b != nil && Reissue(now, certOf(p), b) && c.reissuedFor() != b.Generation {
		action, reissueFor = Renew, b.Generation // a CA rotation or rollback is under way
	}
	if c == a.client && p != nil && action != Bootstrap && a.trust.isRejected(p.Cert) {
		action = Bootstrap
	}
	switch action {
	case Wait:
		return nil
	case Renew:
		err = a.renew(ctx, c)
		if unknownAuthority(err) {
			// The servers moved to a CA this node does not trust yet.
			if changed, rerr := a.rootsFromMetadata(ctx, a.caPEMOrNil()); rerr == nil && changed {
				err = a.renew(ctx, c)
			}
		}
		if c == a.client && clientRejected(err) {
			a.log.Warn("the API no longer accepts the client certificate; bootstrapping from metadata", "credential", c.name)
			err = a.bootstrapClient(ctx)
		}
		if err == nil && reissueFor != 0 {
			c.setReissued(reissueFor)
		}
	case Bootstrap:
		if c == a.client {
			switch {
			case p != nil && a.trust.isRejected(p.Cert):
				a.log.Warn("the API rejects the client certificate; bootstrapping from metadata", "issuer", p.Cert.Issuer.String())
			case p != nil:
				a.log.Warn("client certificate expired; bootstrapping from metadata", "not_after", p.Cert.NotAfter.UTC())
			}
			err = a.bootstrapClient(ctx)
		} else {
			err = a.renew(ctx, c)
		}
	}
	return err
}

// bootstrapClient obtains a client certificate with the bootstrap secret
// read from metadata now (never from an old copy).
func (a *Agent) bootstrapClient(ctx context.Context) error {
	cred, err := a.boot.Fetch(ctx)
	if err != nil {
		return fmt.Errorf("read bootstrap credential from metadata: %w", err)
	}
	a.log.Info("bootstrapping", "credential", "client", "with", cred.String())
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(cred.CABundle) {
		return fmt.Errorf("%w: the CA bundle from %s holds no certificate", bootstrap.ErrBadCredential, cred.Source)
	}
	if err := a.writeRoots(cred.CABundle); err != nil {
		return err
	}
	var getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	if cred.CertPEM != nil {
		bc, err := tls.X509KeyPair(cred.CertPEM, cred.KeyPEM)
		if err != nil {
			return fmt.Errorf("%w: bootstrap certificate from %s: %w", bootstrap.ErrBadCredential, cred.Source, err)
		}
		getCert = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &bc, nil }
	}
	return a.obtain(ctx, a.client, roots, cred.CABundle, cred.Token, getCert, "bootstrap")
}

// renew obtains a new certificate for c authenticated by the current client
// certificate.
func (a *Agent) renew(ctx context.Context, c *credential) error {
	caPEM, roots, err := a.readCA()
	if err != nil {
		return err
	}
	cur := a.client.current()
	if cur == nil {
		return errors.New("no client certificate to authenticate with")
	}
	getCert := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cur.TLS, nil }
	return a.obtain(ctx, c, roots, caPEM, "", getCert, "renew")
}

// obtain runs one CSR for c and stores the result.
func (a *Agent) obtain(ctx context.Context, c *credential, roots *x509.CertPool, caPEM []byte, token string,
	getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error), how string) error {
	node, err := a.node(ctx)
	if err != nil {
		return err
	}
	key, err := c.store.PendingKey()
	if err != nil {
		return fmt.Errorf("%w: %w", errStore, err)
	}
	var req csr.Request
	if c == a.serving {
		dns, ips, err := a.servingNames(ctx)
		if err != nil {
			return err
		}
		req = csr.ServingRequest(node, key, dns, nodeaddr.IPs(ips))
	} else {
		req = csr.ClientRequest(node, key)
	}
	req.Duration = c.duration

	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, GetClientCertificate: getCert},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	defer tr.CloseIdleConnections()
	cl := &csr.Client{
		Server:      a.cfg.Server,
		HTTPClient:  &http.Client{Transport: tr},
		Token:       token,
		Logger:      a.log,
		Clock:       a.clock,
		WaitTimeout: time.Duration(a.cfg.CSRTimeout),
	}
	start := a.clock.Now()
	certPEM, err := cl.Request(ctx, req)
	if err != nil {
		if errors.Is(err, csr.ErrDenied) || errors.Is(err, csr.ErrFailed) || errors.Is(err, csr.ErrDeleted) || errors.Is(err, csr.ErrIncompatible) {
			// That request is finished for good: the next attempt needs a
			// new key and so a new CSR.
			c.store.DiscardPendingKey()
		}
		if !errors.Is(err, csr.ErrUnauthorized) && !isNetwork(err) {
			a.contact()
		}
		return fmt.Errorf("%s %s certificate for %s: %w", how, c.name, node, err)
	}
	a.contact()
	a.m.csrWait.WithLabelValues(c.name).Observe(a.clock.Now().Sub(start).Seconds())
	keyPEM, err := marshalKey(key)
	if err != nil {
		return fmt.Errorf("%w: %w", errStore, err)
	}
	if _, now, err := a.readCA(); err == nil && how == "renew" {
		// A rotation may have started while the request was out: the
		// certificate chains to the bundle read since, not the older one.
		roots = now
	}
	p, err := c.store.Update(certPEM, keyPEM, roots)
	if err != nil {
		return fmt.Errorf("%w: %w", errStore, err)
	}
	c.store.DiscardPendingKey()
	c.set(p, a.rand())
	c.succeeded(a.clock.Now())
	a.m.rotations.WithLabelValues(c.name, how).Inc()
	if c == a.client {
		if how == "bootstrap" {
			a.trust.setRejected(nil)
		}
		signal(a.trust.poke) // check the trust bundle with the new certificate
		if err := a.writeKubeconfig(); err != nil {
			return err
		}
	}
	a.log.Info("certificate obtained", "credential", c.name, "how", how, "subject", p.Cert.Subject.String(),
		"not_after", p.Cert.NotAfter.UTC(), "next_rotation", c.plannedRenewal().UTC())
	return nil
}

// readCA reads the CA bundle written at bootstrap (or the configured file).
func (a *Agent) readCA() ([]byte, *x509.CertPool, error) {
	path := a.caPath
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && a.cfg.CAFile != "" {
		path = a.cfg.CAFile
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: cluster CA bundle: %w", errStore, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, nil, fmt.Errorf("%w: cluster CA bundle %s holds no certificate", errStore, path)
	}
	return b, pool, nil
}

// caPEMOrNil is the stored CA bundle, or nil.
func (a *Agent) caPEMOrNil() []byte {
	b, _, err := a.readCA()
	if err != nil {
		return nil
	}
	return b
}

// node returns the node name: configured, or the instance name in metadata.
func (a *Agent) node(ctx context.Context) (string, error) {
	a.mu.Lock()
	n := a.nodeName
	a.mu.Unlock()
	if n != "" {
		return n, nil
	}
	n, err := a.md.InstanceName(ctx)
	if err != nil {
		return "", fmt.Errorf("node name (nodeName unset, so read from metadata): %w", err)
	}
	a.mu.Lock()
	a.nodeName = n
	a.mu.Unlock()
	return n, nil
}

// servingNames returns the SANs the serving certificate should carry.
func (a *Agent) servingNames(ctx context.Context) ([]string, []netip.Addr, error) {
	var dns []string
	var ips []netip.Addr
	sc := a.cfg.Serving
	if !sc.NoAutoAddresses {
		if h, err := a.hostname(); err == nil && h != "" {
			if ip, err := netip.ParseAddr(h); err == nil {
				ips = append(ips, ip)
			} else {
				dns = append(dns, h)
			}
		}
		found, err := a.addrs()
		if err != nil {
			return nil, nil, err
		}
		ips = append(ips, found...)
	}
	dns = append(dns, sc.DNSNames...)
	for _, s := range sc.IPs {
		ips = append(ips, netip.MustParseAddr(s))
	}
	slices.Sort(dns)
	dns = slices.Compact(dns)
	slices.SortFunc(ips, func(x, y netip.Addr) int { return x.Compare(y) })
	ips = slices.Compact(ips)
	if len(dns)+len(ips) == 0 {
		return nil, nil, errors.New("serving certificate: no address or name for the node (set serving.ips or serving.dnsNames)")
	}
	return dns, ips, nil
}

// servingNamesCovered reports whether cert carries every SAN the node needs.
func (a *Agent) servingNamesCovered(ctx context.Context, cert *x509.Certificate) bool {
	dns, ips, err := a.servingNames(ctx)
	if err != nil {
		return true // nothing better to ask for
	}
	for _, d := range dns {
		if !slices.Contains(cert.DNSNames, d) {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(cert.IPAddresses, func(c net.IP) bool { return c.Equal(net.IP(ip.AsSlice())) }) {
			return false
		}
	}
	return true
}

func marshalKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// errStore marks failures of local storage.
var errStore = errors.New("local storage")

func isNetwork(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || strings.Contains(err.Error(), "connection refused")
}

// classify maps an error to a failure reason label.
func classify(err error) string {
	switch {
	case errors.Is(err, mdclient.ErrNotDefined), errors.Is(err, bootstrap.ErrNoCredential),
		errors.Is(err, bootstrap.ErrPinMismatch), errors.Is(err, bootstrap.ErrBadCredential),
		errors.Is(err, bootstrap.ErrNoCA), errors.Is(err, bootstrap.ErrInvalidConfig),
		strings.Contains(err.Error(), "metadata"):
		return reasonMetadata
	case errors.Is(err, csr.ErrDenied), errors.Is(err, csr.ErrFailed):
		return reasonDenied
	case errors.Is(err, csr.ErrUnauthorized):
		return reasonUnauthorized
	case errors.Is(err, csr.ErrForbidden):
		return reasonForbidden
	case errors.Is(err, csr.ErrTimeout):
		return reasonTimeout
	case errors.Is(err, errStore):
		return reasonStore
	case isNetwork(err):
		return reasonNetwork
	}
	return reasonOther
}

// Status returns the agent's status now.
func (a *Agent) Status() *Status {
	now := a.clock.Now()
	a.mu.Lock()
	node := a.nodeName
	a.mu.Unlock()
	s := &Status{Node: node, Server: a.cfg.Server, Updated: now, Healthy: a.Healthy(), Trust: a.trust.status()}
	for _, c := range a.creds {
		s.Credentials = append(s.Credentials, c.statusAt(now))
	}
	return s
}

func (a *Agent) writeStatus() {
	if err := WriteStatus(a.status, a.Status()); err != nil {
		a.log.Warn("could not write status file", "file", a.status, "err", err)
	}
}
