package controlplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/nodetrust/nodetrust/controlplane/apiserver"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/rotation"
	"github.com/nodetrust/nodetrust/controlplane/signer"
	"github.com/nodetrust/nodetrust/controlplane/store"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// RotationState is the cluster-CA rotation state file.
func (p Paths) RotationState() string { return p.join("pki", "rotation.json") }

// SignerDir is the signer's own folder: CA keys, nothing else reads it.
func (p Paths) SignerDir() string { return p.join("signer") }

// caDir holds the API's credentials under CA id: pki/ for the CA made by
// init, pki/ca-<id>/ for those made by rotations.
func (p Paths) caDir(id int) string {
	if id == 0 {
		return p.join("pki")
	}
	return p.join("pki", "ca-"+strconv.Itoa(id))
}

func (p Paths) servingPair(id int) (cert, key string) {
	d := p.caDir(id)
	return filepath.Join(d, "apiserver.crt"), filepath.Join(d, "apiserver.key")
}

func (p Paths) adminPair(id int) (cert, key string) {
	d := p.caDir(id)
	return filepath.Join(d, "admin.crt"), filepath.Join(d, "admin.key")
}

// rotator runs the cluster-CA rotation of the API process: it holds the
// phase state, persists every change before acting on it, and applies it
// (signer's CA, serving certificate, client CAs, published bundle).
type rotator struct {
	paths    Paths
	metaData string // metadata data file to publish the bundle in; "" for none
	signer   *signer.Client
	store    *store.Store
	clk      clock.Clock
	log      *slog.Logger

	mu    sync.Mutex     // serializes actions
	state rotation.State // guarded by mu; read through snap

	snap  atomic.Pointer[rotation.State]
	cas   atomic.Pointer[[]parsedCA] // of snap
	creds atomic.Pointer[creds]
	nodes nodeIssuers
	kick  chan struct{} // a node's CA changed

	keepFiles     bool // guarded by mu; true until the first step
	publishFailed atomic.Bool
}

func newRotator(cfg Config, p Paths, sc *signer.Client, st *store.Store) (*rotator, error) {
	r := &rotator{paths: p, metaData: cfg.MetadataData, signer: sc, store: st, clk: cfg.Clock, log: cfg.Logger,
		kick: make(chan struct{}, 1)}
	s, err := rotation.Load(p.RotationState())
	// A folder that never rotated keeps init's files as they are (an
	// admin may have edited admin.kubeconfig); otherwise they are made to
	// follow the state, which repairs a crash between save and apply.
	r.keepFiles = rotation.IsNotExist(err)
	switch {
	case rotation.IsNotExist(err):
		b, err := pki.ReadCertFile(p.CACert())
		if err != nil {
			return nil, fmt.Errorf("%w (run 'nodetrust controlplane init --data-dir %s' first)", err, p.DataDir)
		}
		certs, _ := pki.ParseCerts(b)
		s = rotation.Initial(rotation.CA{ID: 0, Pin: pki.Pin(certs[0]), Cert: pki.EncodeCert(certs[0])})
	case err != nil:
		return nil, err
	}
	cas := parseCAs(s)
	if err := r.nodes.load(st, cas); err != nil {
		return nil, err
	}
	r.state = s
	if err := r.apply(s); err != nil {
		return nil, err
	}
	return r, nil
}

// apply makes everything follow s; it is idempotent, so a crash after s
// was saved is repaired by applying s again at start.
func (r *rotator) apply(s rotation.State) error {
	r.signer.SetCA(s.Active)
	pool := x509.NewCertPool()
	for _, ca := range s.CAs {
		if !pool.AppendCertsFromPEM(ca.Cert) {
			return fmt.Errorf("rotation state: CA %d has no certificate", ca.ID)
		}
	}
	crt, key := r.paths.servingPair(s.ServingCA().ID)
	if err := pki.CheckKeyFileMode(key); err != nil {
		return err
	}
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return fmt.Errorf("API serving pair %s: %w", crt, err)
	}
	r.creds.Store(&creds{gen: s.Generation, cert: pair, pool: pool})
	cas := parseCAs(s)
	r.cas.Store(&cas)
	r.snap.Store(&s)
	bundle := s.BundlePEM()
	if !r.keepFiles {
		if err := writeIfChanged(r.paths.CACert(), bundle, 0o644); err != nil {
			return err
		}
		if err := r.writeAdminKubeconfig(s); err != nil {
			return err
		}
	}
	r.publish()
	return nil
}

// publish writes the bundle into the metadata data file. A failure (a
// data file that is invalid, or one the bundle would make invalid) does
// not stop the control plane: it is logged and retried every check.
func (r *rotator) publish() {
	if r.metaData == "" {
		return
	}
	s := r.snap.Load()
	if err := PublishBundle(r.metaData, s.BundlePEM()); err != nil {
		r.publishFailed.Store(true)
		r.log.Error("trust bundle not published in the metadata data file; booting nodes get the old one until this is fixed (retried every check)",
			"file", r.metaData, "generation", s.Generation, "err", err)
		return
	}
	r.publishFailed.Store(false)
}

// writeAdminKubeconfig points the admin kubeconfig at the active CA's
// admin certificate, trusting the whole bundle.
func (r *rotator) writeAdminKubeconfig(s rotation.State) error {
	path := r.paths.AdminKubeconfig()
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("admin kubeconfig: %w", err)
	}
	server, err := kubeconfigServer(old)
	if err != nil {
		return fmt.Errorf("admin kubeconfig %s: %w", path, err)
	}
	crt, key := r.paths.adminPair(s.ActiveCA().ID)
	certPEM, err := os.ReadFile(crt)
	if err != nil {
		return fmt.Errorf("admin certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(key)
	if err != nil {
		return fmt.Errorf("admin key: %w", err)
	}
	kc, err := pki.Kubeconfig("nodetrust", server, s.BundlePEM(), "nodetrust-admin", pki.Credentials{CertPEM: certPEM, KeyPEM: keyPEM})
	if err != nil {
		return err
	}
	return writeIfChanged(path, kc, 0o600)
}

func writeIfChanged(path string, b []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return nil
	}
	return pki.WriteFile(path, b, mode)
}

// commit saves s, then applies it. Called with mu held.
func (r *rotator) commit(s rotation.State) error {
	if err := rotation.Save(r.paths.RotationState(), s); err != nil {
		return err
	}
	r.state = s
	r.keepFiles = false
	r.log.Info("CA rotation", "phase", string(s.Phase), "active_ca", s.Active, "generation", s.Generation)
	return r.apply(s)
}

// phaseError is a refused action: apiserver answers it with 409.
type phaseError struct{ error }

func (e phaseError) Unwrap() error { return e.error }
func (e phaseError) Is(target error) bool {
	return target == apiserver.ErrRotationPhase
}

// Act runs a rotation action.
func (r *rotator) Act(ctx context.Context, action string) (apiserver.RotationStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var next rotation.State
	var err error
	switch action {
	case "start":
		if r.state.Phase != rotation.Idle {
			_, err = rotation.Start(r.state, rotation.CA{})
			break
		}
		var ca rotation.CA
		if ca, err = r.prepareCA(ctx, r.state.NextID()); err == nil {
			next, err = rotation.Start(r.state, ca)
		}
	case "complete":
		next, err = rotation.Complete(r.state)
	case "rollback":
		next, err = rotation.Rollback(r.state)
	default:
		err = fmt.Errorf("unknown rotation action %q", action)
	}
	if err != nil {
		if errors.Is(err, rotation.ErrPhase) {
			err = phaseError{err}
		}
		return r.Status(), err
	}
	dropped := r.state.CAs
	if err := r.commit(next); err != nil {
		return r.Status(), err
	}
	select { // a start with no node on the old CA moves on at once
	case r.kick <- struct{}{}:
	default:
	}
	if next.Phase == rotation.Idle {
		for _, ca := range dropped {
			if ca.Pin != next.Active {
				r.dropAtSigner(ctx, ca)
			}
		}
	}
	return r.Status(), nil
}

// dropAtSigner asks the signer to delete a CA key no longer trusted. A
// failure is logged only: the key then stays in the signer's folder, but
// the CA is trusted nowhere.
func (r *rotator) dropAtSigner(ctx context.Context, ca rotation.CA) {
	if err := r.signer.DropCA(ctx, ca.Pin); err != nil {
		r.log.Warn("signer did not drop the key of a CA no longer trusted; delete it by hand from the signer folder", "ca_id", ca.ID, "ca_pin", ca.Pin, "err", err)
	}
}

// Status reports the phase, the bundle and the nodes per CA.
func (r *rotator) Status() apiserver.RotationStatus {
	s := *r.snap.Load()
	byPin := r.nodes.counts()
	st := apiserver.RotationStatus{CA: "cluster", Phase: string(s.Phase), Generation: s.Generation, Active: s.Active}
	for _, ca := range s.Bundle() {
		info := apiserver.RotationCAInfo{ID: ca.ID, Pin: ca.Pin, Active: ca.Pin == s.Active, Nodes: byPin[ca.Pin]}
		if certs, err := pki.ParseCerts(ca.Cert); err == nil {
			info.Subject, info.NotAfter = certs[0].Subject.String(), certs[0].NotAfter
		}
		st.Bundle = append(st.Bundle, info)
	}
	for pin, n := range byPin {
		st.Nodes += n
		if pin != s.Active {
			st.NodesNotOnActive += n
		}
	}
	return st
}

// TrustBundle is the published bundle.
func (r *rotator) TrustBundle() apiserver.TrustBundle {
	s := r.snap.Load()
	return apiserver.TrustBundle{CAPEM: s.BundlePEM(), Active: s.Active, Phase: string(s.Phase), Generation: s.Generation}
}
