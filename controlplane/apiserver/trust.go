package apiserver

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The ConfigMap the trust bundle is published as (see docs/rotation.md).
const (
	TrustBundleNamespace = "kube-public"
	TrustBundleName      = "nodetrust-trust-bundle"
)

// TrustBundle is what the trust-bundle ConfigMap carries.
type TrustBundle struct {
	// CAPEM is every trusted cluster root, the active one first.
	CAPEM []byte
	// Active is "sha256:<hex>" of the SubjectPublicKeyInfo of the CA
	// that signs now.
	Active     string
	Phase      string
	Generation uint64
}

// TrustBundleConfigMap returns b as the ConfigMap served.
func TrustBundleConfigMap(b TrustBundle) *corev1.ConfigMap {
	gen := strconv.FormatUint(b.Generation, 10)
	return &corev1.ConfigMap{
		TypeMeta: metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: TrustBundleName, Namespace: TrustBundleNamespace, ResourceVersion: gen,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "nodetrust"}},
		Data: map[string]string{"ca.crt": string(b.CAPEM), "active": b.Active, "phase": b.Phase, "generation": gen},
	}
}

// RotationCAInfo describes one CA of a rotation status.
type RotationCAInfo struct {
	ID       int       `json:"id"`
	Pin      string    `json:"pin"`
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"notAfter"`
	Active   bool      `json:"active"`
	// Nodes is how many nodes' newest client certificate this CA issued.
	Nodes int `json:"nodes"`
}

// RotationStatus is the answer of the rotation admin endpoints.
type RotationStatus struct {
	CA         string           `json:"ca"` // "cluster" or "etcd"
	Phase      string           `json:"phase"`
	Generation uint64           `json:"generation"`
	Active     string           `json:"active"`
	Bundle     []RotationCAInfo `json:"bundle"`
	// Nodes is how many nodes have an issued client certificate;
	// NodesNotOnActive how many of them are on another CA than the
	// active one.
	Nodes            int `json:"nodes"`
	NodesNotOnActive int `json:"nodesNotOnActive"`
}

// Rotation is the control plane's CA rotation, driven through the admin
// API.
type Rotation interface {
	TrustBundle() TrustBundle
	Status() RotationStatus
	// Act runs "start", "complete" or "rollback". Errors wrapping
	// ErrRotationPhase are the caller's (409).
	Act(ctx context.Context, action string) (RotationStatus, error)
}

// ErrRotationPhase is wrapped by Rotation.Act errors that refuse the
// action in the current phase.
var ErrRotationPhase = errors.New("rotation action not allowed now")

var rotationResource = schema.GroupResource{Group: AdminGroup, Resource: "rotation"}

func (s *Server) trustRoutes(m *http.ServeMux) {
	m.HandleFunc("GET /api/v1/namespaces/{ns}/configmaps/{name}", s.getConfigMap)
	base := "/apis/" + AdminGroup + "/v1/rotation"
	m.HandleFunc("GET "+base, s.admin(s.rotationStatus))
	m.HandleFunc("POST "+base+"/{action}", s.admin(s.rotationAct))
}

// getConfigMap serves the trust bundle to every authenticated caller.
func (s *Server) getConfigMap(w http.ResponseWriter, r *http.Request) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	if s.cfg.Rotation == nil || ns != TrustBundleNamespace || name != TrustBundleName {
		writeStatus(w, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name))
		return
	}
	writeJSON(w, http.StatusOK, TrustBundleConfigMap(s.cfg.Rotation.TrustBundle()))
}

func (s *Server) rotationStatus(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Rotation == nil {
		writeStatus(w, apierrors.NewNotFound(rotationResource, "cluster"))
		return
	}
	writeJSON(w, http.StatusOK, s.cfg.Rotation.Status())
}

func (s *Server) rotationAct(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Rotation == nil {
		writeStatus(w, apierrors.NewNotFound(rotationResource, "cluster"))
		return
	}
	action := r.PathValue("action")
	switch action {
	case "start", "complete", "rollback":
	default:
		writeStatus(w, apierrors.NewBadRequest("unknown rotation action "+strconv.Quote(action)+"; want start, complete or rollback"))
		return
	}
	st, err := s.cfg.Rotation.Act(r.Context(), action)
	if err != nil {
		if errors.Is(err, ErrRotationPhase) {
			writeStatus(w, &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: http.StatusConflict,
				Reason: metav1.StatusReasonConflict, Message: err.Error(),
				Details: &metav1.StatusDetails{Name: "cluster", Group: AdminGroup, Kind: rotationResource.Resource}}})
			return
		}
		s.log.Error("rotation", "action", action, "err", err)
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	s.log.Info("rotation", "action", action, "phase", st.Phase, "active_ca", st.Active, "generation", st.Generation, "user", userFrom(r.Context()).Name)
	writeJSON(w, http.StatusOK, st)
}
