package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
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

// nodeIssuers tracks the CA of each node's newest client certificate.
type nodeIssuers struct {
	mu    sync.Mutex
	nodes map[string]nodeCA // guarded by mu
}

func (n *nodeIssuers) load(st *store.Store) error {
	objs, _ := st.List(nodeCAKind)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nodes = make(map[string]nodeCA, len(objs))
	for _, o := range objs {
		var v nodeCA
		if err := json.Unmarshal(o.Data, &v); err != nil {
			return fmt.Errorf("store: %s %q: %w", nodeCAKind, o.Name, err)
		}
		n.nodes[o.Name] = v
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
	return !ok || cur.Pin != v.Pin
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

// issued is the approver's hook: a certificate was stored for csr.
func (r *rotator) issued(csr *certv1.CertificateSigningRequest, certPEM []byte) {
	if csr.Spec.SignerName != csrpolicy.SignerKubeletClient {
		return
	}
	certs, err := pki.ParseCerts(certPEM)
	if err != nil {
		return
	}
	c := certs[0]
	node, ok := csrpolicy.NodeName(c.Subject.CommonName)
	if !ok {
		return
	}
	s := r.snap.Load()
	pin := ""
	for _, ca := range s.CAs {
		if cas, err := pki.ParseCerts(ca.Cert); err == nil && c.CheckSignatureFrom(cas[0]) == nil {
			pin = ca.Pin
			break
		}
	}
	if pin == "" {
		return
	}
	v := nodeCA{Pin: pin, NotBefore: c.NotBefore}
	if !r.nodes.set(node, v) {
		return
	}
	b, _ := json.Marshal(v)
	_, err = r.store.Create(nodeCAKind, node, func(uint64) ([]byte, error) { return b, nil })
	if errors.Is(err, store.ErrExists) {
		_, err = r.store.Update(nodeCAKind, node, func(store.Object, uint64) ([]byte, error) { return b, nil })
	}
	if err != nil {
		r.log.Warn("record the CA of a node's certificate", "node", node, "err", err)
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// DefaultRotationCheck is how often the rotator looks whether every node
// has moved to the new CA.
const DefaultRotationCheck = 10 * time.Second

// run moves update-clients to update-servers once no node is left on a
// CA other than the active one; it returns when ctx is done.
func (r *rotator) run(ctx context.Context, every time.Duration) error {
	t := r.clk.NewTicker(every)
	defer t.Stop()
	for {
		r.maybeUpdateServers(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		case <-r.kick:
		}
	}
}

func (r *rotator) maybeUpdateServers(ctx context.Context) {
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
