package controlplane

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/csrs"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/rotation"
	"github.com/nodetrust/nodetrust/controlplane/store"
)

// nodeCAKind is the store kind recording, per node name, which CA issued
// its newest client certificate (CSRs themselves are collected after an
// hour).
const nodeCAKind = "nodecas"

type nodeCA struct {
	Pin       string    `json:"pin"`
	NotBefore time.Time `json:"notBefore"`
}

// nodeIssuers tracks the CA of each node's newest client certificate. It
// is updated in memory when a certificate is issued and written to the
// store in the background (flush), so that issuing never waits for it;
// what a crash loses is found again in the CSRs at the next start.
type nodeIssuers struct {
	mu    sync.Mutex
	nodes map[string]nodeCA // guarded by mu
	dirty map[string]bool   // not yet in the store; guarded by mu
}

// load reads the records, then the issued CSRs still in the store.
func (n *nodeIssuers) load(st *store.Store, cas []parsedCA) error {
	objs, _ := st.List(nodeCAKind)
	n.mu.Lock()
	n.nodes = make(map[string]nodeCA, len(objs))
	n.dirty = map[string]bool{}
	for _, o := range objs {
		var v nodeCA
		if err := json.Unmarshal(o.Data, &v); err != nil {
			n.mu.Unlock()
			return fmt.Errorf("store: %s %q: %w", nodeCAKind, o.Name, err)
		}
		n.nodes[o.Name] = v
	}
	n.mu.Unlock()
	reqs, _ := st.List(csrs.Kind)
	for _, o := range reqs {
		c, err := csrs.Decode(o)
		if err != nil || len(c.Status.Certificate) == 0 {
			continue
		}
		if node, v, ok := issuerOf(c, c.Status.Certificate, cas); ok {
			n.set(node, v)
		}
	}
	return nil
}

// set records v for node unless a newer certificate is known; it reports
// whether the node's CA changed.
func (n *nodeIssuers) set(node string, v nodeCA) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	cur, ok := n.nodes[node]
	if ok && cur.NotBefore.After(v.NotBefore) {
		return false
	}
	n.nodes[node] = v
	if !ok || cur.Pin != v.Pin {
		n.dirty[node] = true
		return true
	}
	return false
}

func (n *nodeIssuers) counts() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]int{}
	for _, v := range n.nodes {
		out[v.Pin]++
	}
	return out
}

// flushWriters bounds the store writes flush makes at once (they share
// fsyncs).
const flushWriters = 32

// flush writes the records changed since the last flush.
func (n *nodeIssuers) flush(st *store.Store) error {
	n.mu.Lock()
	batch := make(map[string][]byte, len(n.dirty))
	for node := range n.dirty {
		batch[node], _ = json.Marshal(n.nodes[node])
	}
	clear(n.dirty)
	n.mu.Unlock()
	sema := make(chan struct{}, flushWriters)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for node, b := range batch {
		sema <- struct{}{}
		wg.Go(func() {
			defer func() { <-sema }()
			_, err := st.Create(nodeCAKind, node, func(uint64) ([]byte, error) { return b, nil })
			if errors.Is(err, store.ErrExists) {
				_, err = st.Update(nodeCAKind, node, func(store.Object, uint64) ([]byte, error) { return b, nil })
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("node %s: %w", node, err))
				mu.Unlock()
				n.mu.Lock()
				n.dirty[node] = true // next time
				n.mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// parsedCA is a CA of the state, parsed once.
type parsedCA struct {
	pin  string
	cert *x509.Certificate
}

func parseCAs(s rotation.State) []parsedCA {
	out := make([]parsedCA, 0, len(s.CAs))
	for _, ca := range s.CAs {
		if c, err := pki.ParseCerts(ca.Cert); err == nil {
			out = append(out, parsedCA{ca.Pin, c[0]})
		}
	}
	return out
}

// issuerOf returns the node and CA of a kubelet client certificate issued
// for csr by one of cas.
func issuerOf(csr *certv1.CertificateSigningRequest, certPEM []byte, cas []parsedCA) (string, nodeCA, bool) {
	if csr.Spec.SignerName != csrpolicy.SignerKubeletClient {
		return "", nodeCA{}, false
	}
	certs, err := pki.ParseCerts(certPEM)
	if err != nil {
		return "", nodeCA{}, false
	}
	c := certs[0]
	node, ok := csrpolicy.NodeName(c.Subject.CommonName)
	if !ok {
		return "", nodeCA{}, false
	}
	for _, ca := range cas {
		if len(c.AuthorityKeyId) > 0 && len(ca.cert.SubjectKeyId) > 0 {
			if bytes.Equal(c.AuthorityKeyId, ca.cert.SubjectKeyId) {
				return node, nodeCA{Pin: ca.pin, NotBefore: c.NotBefore}, true
			}
			continue
		}
		if c.CheckSignatureFrom(ca.cert) == nil {
			return node, nodeCA{Pin: ca.pin, NotBefore: c.NotBefore}, true
		}
	}
	return "", nodeCA{}, false
}

// issued is the approver's hook: a certificate was stored for csr. It
// never waits for the store.
func (r *rotator) issued(csr *certv1.CertificateSigningRequest, certPEM []byte) {
	node, v, ok := issuerOf(csr, certPEM, *r.cas.Load())
	if !ok || !r.nodes.set(node, v) {
		return
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// DefaultRotationCheck is how often the rotator looks whether every node
// has moved to the new CA.
const DefaultRotationCheck = 10 * time.Second

// run writes node records and moves update-clients to update-servers once
// no node is left on a CA other than the active one; it returns when ctx
// is done, after a last write of the records.
func (r *rotator) run(ctx context.Context, every time.Duration) error {
	t := r.clk.NewTicker(every)
	defer t.Stop()
	for {
		r.maybeUpdateServers()
		select {
		case <-ctx.Done():
			r.nodes.flush(r.store)
			return nil
		case <-t.C():
			// Records are written in batches, once per tick: fewer
			// fsyncs during bootstrap storms.
			if err := r.nodes.flush(r.store); err != nil && ctx.Err() == nil {
				r.log.Warn("record the CA of nodes' certificates", "err", err)
			}
			if r.publishFailed.Load() {
				r.mu.Lock()
				r.publish()
				r.mu.Unlock()
			}
		case <-r.kick:
		}
	}
}

func (r *rotator) maybeUpdateServers() {
	if r.snap.Load().Phase != rotation.UpdateClients || r.Status().NodesNotOnActive > 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next, err := rotation.UpdateServersNow(r.state)
	if err != nil {
		return // the phase moved meanwhile
	}
	if err := r.commit(next); err != nil {
		r.log.Error("CA rotation: move to update-servers", "err", err)
	}
}
