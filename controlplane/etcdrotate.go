package controlplane

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/apiserver"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/rotation"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// The etcd files of a data folder besides the CA.
func (p Paths) etcdServerPair() (cert, key string) {
	return p.join("etcd", "server.crt"), p.join("etcd", "server.key")
}

func (p Paths) etcdClientPair() (cert, key string) {
	return p.join("pki", "apiserver-etcd-client.crt"), p.join("pki", "apiserver-etcd-client.key")
}

// EtcdRotationState is the etcd-CA rotation state file.
func (p Paths) EtcdRotationState() string { return p.join("etcd", "rotation.json") }

func (p Paths) etcdCAKey(id int) string {
	if id == 0 {
		return p.EtcdCAKey()
	}
	return p.join("etcd", "ca-"+strconv.Itoa(id)+".key")
}

// EtcdRotateOptions configures RotateEtcd.
type EtcdRotateOptions struct {
	DataDir string
	// Action is "start", "complete", "rollback" or "status".
	Action string
	// CertValidity is the lifetime of re-issued certificates; 0 means one
	// year.
	CertValidity time.Duration
	Clock        clock.Clock
}

// RotateEtcd runs an etcd-CA rotation step on the data folder's files
// (the etcd CA key is no secret of the signer): start makes a new etcd CA
// (bundle old+new in etcd/ca.crt) and re-issues the API-to-etcd client
// certificate under it; complete moves to update-servers (the etcd
// serving certificate re-issued under the new CA), then drops the old
// CA; rollback re-issues both under the old CA, and complete then drops
// the new one. The cluster CA's files are not touched. Steps are
// serialized by a lock file and crash-safe: the state is saved before the
// files follow it, and every run first repairs files that do not.
func RotateEtcd(opt EtcdRotateOptions) (apiserver.RotationStatus, error) {
	p := Paths{opt.DataDir}
	if opt.CertValidity <= 0 {
		opt.CertValidity = 365 * 24 * time.Hour
	}
	now := clock.Or(opt.Clock).Now()
	unlock, err := lockFile(p.join("etcd", "rotation.lock"))
	if err != nil {
		return apiserver.RotationStatus{}, err
	}
	defer unlock()
	s, err := rotation.Load(p.EtcdRotationState())
	if rotation.IsNotExist(err) {
		b, rerr := pki.ReadCertFile(p.EtcdCACert())
		if rerr != nil {
			return apiserver.RotationStatus{}, rerr
		}
		certs, _ := pki.ParseCerts(b)
		s, err = rotation.Initial(rotation.CA{ID: 0, Pin: pki.Pin(certs[0]), Cert: pki.EncodeCert(certs[0])}), nil
	}
	if err != nil {
		return apiserver.RotationStatus{}, err
	}
	e := etcdRotator{p: p, now: now, validity: opt.CertValidity}
	if err := e.apply(s); err != nil { // repair a step a crash cut short
		return e.status(s), err
	}
	var next rotation.State
	switch opt.Action {
	case "status":
		return e.status(s), nil
	case "start":
		if s.Phase != rotation.Idle {
			_, err = rotation.Start(s, rotation.CA{})
			break
		}
		var ca rotation.CA
		if ca, err = e.newCA(s.NextID()); err == nil {
			next, err = rotation.Start(s, ca)
		}
	case "complete":
		next, err = rotation.Complete(s)
	case "rollback":
		next, err = rotation.Rollback(s)
	default:
		err = fmt.Errorf("unknown rotation action %q; want start, status, complete or rollback", opt.Action)
	}
	if err != nil {
		return e.status(s), err
	}
	if err := rotation.Save(p.EtcdRotationState(), next); err != nil {
		return e.status(s), err
	}
	if err := e.apply(next); err != nil {
		return e.status(next), err
	}
	if next.Phase == rotation.Idle {
		for _, ca := range s.CAs {
			if ca.Pin != next.Active {
				if err := os.Remove(p.etcdCAKey(ca.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return e.status(next), fmt.Errorf("drop etcd CA %d key: %w", ca.ID, err)
				}
			}
		}
	}
	return e.status(next), nil
}

type etcdRotator struct {
	p        Paths
	now      time.Time
	validity time.Duration
}

// newCA makes etcd CA id, key and certificate, before the state names it.
func (e etcdRotator) newCA(id int) (rotation.CA, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return rotation.CA{}, err
	}
	ca, err := pki.NewCA(fmt.Sprintf("nodetrust-etcd-ca-%d", id), key, e.now, 10*365*24*time.Hour)
	if err != nil {
		return rotation.CA{}, err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return rotation.CA{}, err
	}
	if err := pki.WriteFile(e.p.etcdCAKey(id), keyPEM, 0o600); err != nil {
		return rotation.CA{}, err
	}
	return rotation.CA{ID: id, Pin: pki.Pin(ca), Cert: pki.EncodeCert(ca)}, nil
}

// apply makes the etcd files follow s: the bundle, the client certificate
// under the active CA, the serving certificate under the serving CA.
func (e etcdRotator) apply(s rotation.State) error {
	if err := writeIfChanged(e.p.EtcdCACert(), s.BundlePEM(), 0o644); err != nil {
		return err
	}
	crt, key := e.p.etcdClientPair()
	if err := e.ensureLeaf(crt, key, s.ActiveCA()); err != nil {
		return err
	}
	crt, key = e.p.etcdServerPair()
	return e.ensureLeaf(crt, key, s.ServingCA())
}

// ensureLeaf re-issues the pair at certPath/keyPath under ca, with the
// same subject, names and usages and a new key, unless ca issued it for
// that key already.
func (e etcdRotator) ensureLeaf(certPath, keyPath string, ca rotation.CA) error {
	cas, err := pki.ParseCerts(ca.Cert)
	if err != nil {
		return fmt.Errorf("etcd CA %d: %w", ca.ID, err)
	}
	b, err := pki.ReadCertFile(certPath)
	if err != nil {
		return err
	}
	certs, _ := pki.ParseCerts(b)
	cur := certs[0]
	if k, err := pki.ReadKeyFile(keyPath); err == nil && cur.CheckSignatureFrom(cas[0]) == nil && samePublic(cur.PublicKey, k.Public()) {
		return nil
	}
	caKey, err := pki.ReadKeyFile(e.p.etcdCAKey(ca.ID))
	if err != nil {
		return fmt.Errorf("etcd CA %d: %w", ca.ID, err)
	}
	return e.reissue(cur, cas[0], caKey, certPath, keyPath)
}

func (e etcdRotator) reissue(cur, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string) error {
	key, err := pki.GenerateKey()
	if err != nil {
		return err
	}
	c, err := pki.Issue(pki.LeafSpec{CommonName: cur.Subject.CommonName, Organizations: cur.Subject.Organization,
		DNSNames: cur.DNSNames, IPs: cur.IPAddresses, KeyUsage: cur.KeyUsage, ExtKeyUsage: cur.ExtKeyUsage,
		NotBefore: e.now.Add(-pki.Backdate), NotAfter: e.now.Add(e.validity)}, key.Public(), ca, caKey)
	if err != nil {
		return err
	}
	keyPEM, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	// Key first: a crash between the two leaves a pair that does not
	// match, which the next run re-issues.
	if err := pki.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return pki.WriteFile(certPath, pki.EncodeCert(c), 0o644)
}

func (e etcdRotator) status(s rotation.State) apiserver.RotationStatus {
	st := apiserver.RotationStatus{CA: "etcd", Phase: string(s.Phase), Generation: s.Generation, Active: s.Active}
	for _, ca := range s.Bundle() {
		info := apiserver.RotationCAInfo{ID: ca.ID, Pin: ca.Pin, Active: ca.Pin == s.Active}
		if certs, err := pki.ParseCerts(ca.Cert); err == nil {
			info.Subject, info.NotAfter = certs[0].Subject.String(), certs[0].NotAfter
		}
		st.Bundle = append(st.Bundle, info)
	}
	return st
}

// lockFile takes an exclusive lock on path, waiting for it.
func lockFile(path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
