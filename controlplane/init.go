package controlplane

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// ErrInitialized is returned by Init when the data folder already has a
// cluster CA.
var ErrInitialized = errors.New("data folder is already initialized")

// InitOptions configures Init.
type InitOptions struct {
	DataDir string
	// SANs are the API serving certificate's DNS names and IPs; localhost
	// and 127.0.0.1 are always added.
	SANs []string
	// Server is the API URL written into the admin kubeconfig.
	Server string
	// CAValidity is the lifetime of both CAs; 0 means 10 years.
	CAValidity time.Duration
	// CertValidity is the lifetime of the serving and admin certificates;
	// 0 means one year.
	CertValidity time.Duration
	Clock        clock.Clock
}

// Init creates the trust roots in a new data folder: the cluster CA (its
// key in signer/, for the signer process only), a separate etcd CA with an
// etcd serving and an API-to-etcd client certificate, the API serving
// certificate, the admin client certificate and admin kubeconfig. Keys are
// written 0600, every file crash-safely.
func Init(opt InitOptions) error {
	p := Paths{opt.DataDir}
	if _, err := os.Stat(p.CACert()); err == nil {
		return fmt.Errorf("%w: %s exists", ErrInitialized, p.CACert())
	}
	if opt.CAValidity <= 0 {
		opt.CAValidity = 10 * 365 * 24 * time.Hour
	}
	if opt.CertValidity <= 0 {
		opt.CertValidity = csrpolicy.DefaultDuration
	}
	if opt.Server == "" {
		opt.Server = "https://127.0.0.1:6443"
	}
	now := clock.Or(opt.Clock).Now()
	for _, d := range []string{"pki", "signer", "etcd", "store", "run"} {
		if err := os.MkdirAll(filepath.Join(opt.DataDir, d), 0o700); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	dnsNames, ips := []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, s := range opt.SANs {
		if ip := net.ParseIP(s); ip != nil {
			ips = append(ips, ip)
		} else if s != "" {
			dnsNames = append(dnsNames, s)
		}
	}
	w := &writer{}
	ca, caKey := w.ca("nodetrust-cluster-ca", now, opt.CAValidity, "", p.CAKey()) // certificate written last
	etcdCA, etcdKey := w.ca("nodetrust-etcd-ca", now, opt.CAValidity, p.EtcdCACert(), p.EtcdCAKey())
	leaf := func(cn string, orgs []string, eku []x509.ExtKeyUsage, dns []string, ips []net.IP) pki.LeafSpec {
		return pki.LeafSpec{CommonName: cn, Organizations: orgs, DNSNames: dns, IPs: ips,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: eku,
			NotBefore: now.Add(-pki.Backdate), NotAfter: now.Add(opt.CertValidity)}
	}
	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	w.leaf(leaf("kube-apiserver", nil, server, append(dnsNames, "kubernetes", "kubernetes.default", "kubernetes.default.svc"), ips), ca, caKey, p.APIServerCert(), p.APIServerKey())
	adminCert, adminKey := w.leaf(leaf("nodetrust-admin", []string{csrpolicy.MastersGroup}, client, nil, nil), ca, caKey, p.AdminCert(), p.AdminKey())
	w.leaf(leaf("etcd-server", nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, dnsNames, ips), etcdCA, etcdKey,
		p.join("etcd", "server.crt"), p.join("etcd", "server.key"))
	w.leaf(leaf("kube-apiserver-etcd-client", nil, client, nil, nil), etcdCA, etcdKey,
		p.join("pki", "apiserver-etcd-client.crt"), p.join("pki", "apiserver-etcd-client.key"))
	if w.err != nil {
		return w.err
	}
	kc, err := pki.Kubeconfig("nodetrust", opt.Server, pki.EncodeCert(ca), "nodetrust-admin", pki.Credentials{CertPEM: adminCert, KeyPEM: adminKey})
	if err != nil {
		return err
	}
	// The CA certificate is written last: its presence marks a finished init.
	if err := pki.WriteFile(p.AdminKubeconfig(), kc, 0o600); err != nil {
		return err
	}
	return pki.WriteFile(p.CACert(), pki.EncodeCert(ca), 0o644)
}

// writer keeps the first error of a sequence of steps.
type writer struct{ err error }

// ca makes a CA and writes its key, and its certificate unless certPath
// is empty.
func (w *writer) ca(cn string, now time.Time, validity time.Duration, certPath, keyPath string) (*x509.Certificate, crypto.Signer) {
	if w.err != nil {
		return nil, nil
	}
	key, err := pki.GenerateKey()
	if err != nil {
		w.err = err
		return nil, nil
	}
	cert, err := pki.NewCA(cn, key, now, validity)
	if err != nil {
		w.err = err
		return nil, nil
	}
	w.writeKey(keyPath, key)
	if certPath != "" {
		w.write(certPath, pki.EncodeCert(cert), 0o644)
	}
	return cert, key
}

func (w *writer) leaf(spec pki.LeafSpec, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string) (certPEM, keyPEM []byte) {
	if w.err != nil {
		return nil, nil
	}
	key, err := pki.GenerateKey()
	if err != nil {
		w.err = err
		return nil, nil
	}
	cert, err := pki.Issue(spec, key.Public(), ca, caKey)
	if err != nil {
		w.err = err
		return nil, nil
	}
	keyPEM = w.writeKey(keyPath, key)
	certPEM = pki.EncodeCert(cert)
	w.write(certPath, certPEM, 0o644)
	return certPEM, keyPEM
}

func (w *writer) writeKey(path string, key crypto.Signer) []byte {
	if w.err != nil {
		return nil
	}
	b, err := pki.EncodeKey(key)
	if err != nil {
		w.err = err
		return nil
	}
	w.write(path, b, 0o600)
	return b
}

func (w *writer) write(path string, b []byte, mode os.FileMode) {
	if w.err == nil {
		w.err = pki.WriteFile(path, b, mode)
	}
}
