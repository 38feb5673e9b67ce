// Package rotation is the phase machine of a CA rotation: which CAs are
// trusted, which one signs, which one the servers present, as pure
// functions of a persisted State. The control plane applies the effects
// (see docs/rotation.md); this package decides only what is allowed.
package rotation

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/nodetrust/nodetrust/controlplane/pki"
)

// Phase is where a rotation stands.
type Phase string

// The phases, in the order a rotation goes through them.
const (
	Idle          Phase = "idle"
	UpdateClients Phase = "update-clients"
	UpdateServers Phase = "update-servers"
	RolledBack    Phase = "rollback"
)

// ErrPhase is matched (errors.Is) by every refused transition, a
// *PhaseError.
var ErrPhase = errors.New("not allowed in this phase")

// PhaseError is a transition refused in the current phase.
type PhaseError struct {
	Op    string // start, complete, rollback or update-servers
	Why   string
	Phase Phase
}

func (e *PhaseError) Error() string {
	return fmt.Sprintf("rotate %s: %s (phase %s)", e.Op, e.Why, e.Phase)
}

// Is makes errors.Is(err, ErrPhase) true.
func (e *PhaseError) Is(target error) bool { return target == ErrPhase }

// CA is one trusted root.
type CA struct {
	// ID is 0 for the CA made by init and the rotation number for the CA
	// made by that rotation's start.
	ID int `json:"id"`
	// Pin is "sha256:<hex of the SubjectPublicKeyInfo>".
	Pin string `json:"pin"`
	// Cert is the CA certificate, PEM.
	Cert []byte `json:"cert"`
}

// State is everything a rotation needs to resume after a crash.
type State struct {
	Phase Phase `json:"phase"`
	// Generation counts changes of the trust bundle or phase.
	Generation uint64 `json:"generation"`
	// CAs are the trusted roots in the order they were made: one when
	// idle, the old and the new one during a rotation.
	CAs []CA `json:"cas"`
	// Active is the pin of the CA that signs now.
	Active string `json:"active"`
}

// Initial is the state of a data folder that never rotated.
func Initial(ca CA) State {
	return State{Phase: Idle, Generation: 1, CAs: []CA{ca}, Active: ca.Pin}
}

// Pin returns "sha256:<hex>" of cert's SubjectPublicKeyInfo.
func Pin(cert *x509.Certificate) string { return pki.Pin(cert) }

func refuse(op string, s State, why string) error {
	return &PhaseError{Op: op, Why: why, Phase: s.Phase}
}

// NextID is the ID the CA of the next start gets.
func (s State) NextID() int {
	id := 0
	for _, c := range s.CAs {
		id = max(id, c.ID)
	}
	return id + 1
}

// Old is the CA that signed before the rotation (the only one when idle).
func (s State) Old() CA { return s.CAs[0] }

// New is the CA made by the rotation's start; ok is false when idle.
func (s State) New() (ca CA, ok bool) {
	if len(s.CAs) < 2 {
		return CA{}, false
	}
	return s.CAs[len(s.CAs)-1], true
}

// Start makes ca the new, active CA; the bundle holds old and new.
func Start(s State, ca CA) (State, error) {
	if s.Phase != Idle {
		return s, refuse("start", s, "a rotation is already in progress")
	}
	if ca.Pin == "" || ca.Pin == s.Active || ca.ID != s.NextID() {
		return s, fmt.Errorf("rotate start: new CA %d (%s) is not a fresh CA after %d", ca.ID, ca.Pin, s.NextID()-1)
	}
	s.CAs = append(append([]CA(nil), s.CAs...), ca)
	s.Active = ca.Pin
	s.Phase = UpdateClients
	s.Generation++
	return s, nil
}

// UpdateServersNow moves update-clients to update-servers: the servers
// present certificates of the new CA. The control plane calls it once no
// node is left on the old CA; Complete calls it to force the move.
func UpdateServersNow(s State) (State, error) {
	if s.Phase != UpdateClients {
		return s, refuse("update-servers", s, "clients are not being updated")
	}
	s.Phase = UpdateServers
	s.Generation++
	return s, nil
}

// Complete finishes a step: in update-clients it forces update-servers,
// in update-servers it drops the old CA, in rollback it drops the new
// one; both end idle.
func Complete(s State) (State, error) {
	switch s.Phase {
	case UpdateClients:
		return UpdateServersNow(s)
	case UpdateServers:
		n, _ := s.New()
		s.CAs = []CA{n}
	case RolledBack:
		s.CAs = []CA{s.Old()}
	default:
		return s, refuse("complete", s, "no rotation in progress")
	}
	s.Active = s.CAs[0].Pin
	s.Phase = Idle
	s.Generation++
	return s, nil
}

// Rollback makes the old CA active again; the bundle keeps both.
func Rollback(s State) (State, error) {
	switch s.Phase {
	case UpdateClients, UpdateServers:
	case Idle:
		return s, refuse("rollback", s, "no rotation in progress")
	default:
		return s, refuse("rollback", s, "already rolled back; run 'rotate complete' to drop the new CA")
	}
	s.Active = s.Old().Pin
	s.Phase = RolledBack
	s.Generation++
	return s, nil
}

// Bundle is the trusted CAs, the active one first.
func (s State) Bundle() []CA {
	out := make([]CA, 0, len(s.CAs))
	for _, c := range s.CAs {
		if c.Pin == s.Active {
			out = append(out, c)
		}
	}
	for _, c := range s.CAs {
		if c.Pin != s.Active {
			out = append(out, c)
		}
	}
	return out
}

// BundlePEM is the PEM of Bundle.
func (s State) BundlePEM() []byte {
	var b []byte
	for _, c := range s.Bundle() {
		b = append(b, c.Cert...)
	}
	return b
}

// ServingCA is the CA whose certificates the servers present: the old
// one until update-servers and again after a rollback, the new one in
// update-servers, the only one when idle.
func (s State) ServingCA() CA {
	if n, ok := s.New(); ok && s.Phase == UpdateServers {
		return n
	}
	return s.Old()
}

// ActiveCA is the CA that signs now.
func (s State) ActiveCA() CA {
	for _, c := range s.CAs {
		if c.Pin == s.Active {
			return c
		}
	}
	return s.Old()
}

// Check reports a state that cannot have been written by these functions.
func (s State) Check() error {
	switch {
	case len(s.CAs) == 0 || len(s.CAs) > 2:
		return fmt.Errorf("rotation state has %d CAs, want 1 or 2", len(s.CAs))
	case s.Phase == Idle && len(s.CAs) != 1:
		return fmt.Errorf("rotation state is idle with %d CAs", len(s.CAs))
	case s.Phase != Idle && s.Phase != UpdateClients && s.Phase != UpdateServers && s.Phase != RolledBack:
		return fmt.Errorf("rotation state has unknown phase %q", s.Phase)
	case s.Phase != Idle && len(s.CAs) != 2:
		return fmt.Errorf("rotation state in phase %s has %d CAs, want 2", s.Phase, len(s.CAs))
	case s.ActiveCA().Pin != s.Active:
		return fmt.Errorf("rotation state's active CA %s is not in its bundle", s.Active)
	}
	return nil
}
