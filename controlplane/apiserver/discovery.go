package apiserver

import (
	"fmt"
	"net/http"
	"runtime"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"

	nodetrustversion "github.com/nodetrust/nodetrust/internal/version"
)

// KubernetesVersion is the Kubernetes API level the server speaks.
const KubernetesVersion = "v1.37.2"

const certGroup = "certificates.k8s.io"

func (s *Server) routes() {
	m := http.NewServeMux()
	ok := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" && s.cfg.Ready != nil {
			if err := s.cfg.Ready(); err != nil {
				http.Error(w, fmt.Sprintf("not ready: %v", err), http.StatusServiceUnavailable)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok"))
	}
	m.HandleFunc("GET /healthz", ok)
	m.HandleFunc("GET /livez", ok)
	m.HandleFunc("GET /readyz", ok)
	m.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, version.Info{
			Major: "1", Minor: "37", GitVersion: KubernetesVersion + "+nodetrust-" + nodetrustversion.Version,
			GoVersion: runtime.Version(), Compiler: runtime.Compiler, Platform: runtime.GOOS + "/" + runtime.GOARCH,
		})
	})
	m.HandleFunc("GET /api", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, &metav1.APIVersions{
			TypeMeta:                   metav1.TypeMeta{Kind: "APIVersions"},
			Versions:                   []string{"v1"},
			ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{{ClientCIDR: "0.0.0.0/0", ServerAddress: r.Host}},
		})
	})
	m.HandleFunc("GET /api/v1", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, &metav1.APIResourceList{
			TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: "v1",
			// Only the trust-bundle ConfigMap is served (docs/rotation.md).
			APIResources: []metav1.APIResource{{Name: "configmaps", Namespaced: true, Kind: "ConfigMap", Verbs: metav1.Verbs{"get"}, ShortNames: []string{"cm"}}},
		})
	})
	gv := metav1.GroupVersionForDiscovery{GroupVersion: certGroup + "/v1", Version: "v1"}
	group := metav1.APIGroup{
		TypeMeta: metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"},
		Name:     certGroup, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv,
	}
	m.HandleFunc("GET /apis", func(w http.ResponseWriter, r *http.Request) {
		g := group
		g.TypeMeta = metav1.TypeMeta{}
		writeJSON(w, http.StatusOK, &metav1.APIGroupList{
			TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}, Groups: []metav1.APIGroup{g},
		})
	})
	m.HandleFunc("GET /apis/"+certGroup, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, &group)
	})
	m.HandleFunc("GET /apis/"+certGroup+"/v1", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, &metav1.APIResourceList{
			TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: certGroup + "/v1",
			APIResources: []metav1.APIResource{
				{Name: "certificatesigningrequests", SingularName: "certificatesigningrequest", Kind: "CertificateSigningRequest",
					ShortNames: []string{"csr"}, Verbs: metav1.Verbs{"create", "delete", "get", "list", "update", "watch"}},
				{Name: "certificatesigningrequests/approval", Kind: "CertificateSigningRequest", Verbs: metav1.Verbs{"get", "update"}},
				{Name: "certificatesigningrequests/status", Kind: "CertificateSigningRequest", Verbs: metav1.Verbs{"get", "update"}},
			},
		})
	})
	base := "/apis/" + certGroup + "/v1/certificatesigningrequests"
	m.HandleFunc("GET "+base, s.listOrWatch)
	m.HandleFunc("POST "+base, s.create)
	m.HandleFunc("GET /apis/"+certGroup+"/v1/watch/certificatesigningrequests", s.watchLegacy)
	m.HandleFunc("GET /apis/"+certGroup+"/v1/watch/certificatesigningrequests/{name}", s.watchLegacy)
	m.HandleFunc("GET "+base+"/{name}", s.get)
	m.HandleFunc("GET "+base+"/{name}/{sub}", s.get)
	m.HandleFunc("DELETE "+base+"/{name}", s.delete)
	m.HandleFunc("PUT "+base+"/{name}", s.update)
	m.HandleFunc("PUT "+base+"/{name}/{sub}", s.update)
	s.adminRoutes(m)
	s.trustRoutes(m)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, notFoundPath(r.URL.Path))
	})
	s.mux = m
}
