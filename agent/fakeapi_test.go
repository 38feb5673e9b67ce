package agent_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nodetrust/nodetrust/agent"
	"github.com/nodetrust/nodetrust/bootstrap"
)

// rotAPI is a fake API for CA-rotation tests, speaking the contract of
// docs/rotation.md: it signs CSRs at once with the active CA, serves the
// trust-bundle ConfigMap, presents a serving certificate of serverCA and
// accepts client certificates of every CA in the bundle (or a bearer
// token).
type rotAPI struct {
	t     *testing.T
	token string
	srv   *httptest.Server

	mu       sync.Mutex
	cas      []*testCA // the bundle, active first
	active   *testCA
	serverCA *testCA
	server   map[*testCA]*tls.Certificate
	phase    string
	gen      uint64
	noBundle bool // answer 404, as a stock kube-apiserver
	csrs     map[string]*certv1.CertificateSigningRequest
	polls    int
}

func newRotAPI(t *testing.T, ca *testCA, token string) *rotAPI {
	f := &rotAPI{t: t, token: token, cas: []*testCA{ca}, active: ca, serverCA: ca, server: map[*testCA]*tls.Certificate{},
		phase: "idle", gen: 1, csrs: map[string]*certv1.CertificateSigningRequest{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /apis/certificates.k8s.io/v1/certificatesigningrequests", f.auth(f.create))
	mux.HandleFunc("GET /apis/certificates.k8s.io/v1/certificatesigningrequests/{name}", f.auth(f.get))
	mux.HandleFunc("GET "+agent.TrustBundlePath, f.auth(f.configMap))
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		pool := x509.NewCertPool()
		for _, c := range f.cas {
			pool.AddCert(c.cert)
		}
		return &tls.Config{Certificates: []tls.Certificate{*f.serverCertLocked()}, ClientAuth: tls.VerifyClientCertIfGiven,
			ClientCAs: pool, MinVersion: tls.VersionTLS12}, nil
	}}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *rotAPI) URL() string { return f.srv.URL }

func (f *rotAPI) serverCertLocked() *tls.Certificate {
	if c := f.server[f.serverCA]; c != nil {
		return c
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(f.t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "api"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.serverCA.cert, k.Public(), f.serverCA.key)
	require.NoError(f.t, err)
	c := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	f.server[f.serverCA] = c
	return c
}

// set changes the published state: the bundle (active first), the CA of
// the serving certificate, the phase; the generation moves on.
func (f *rotAPI) set(phase string, server *testCA, bundle ...*testCA) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cas, f.active, f.serverCA, f.phase = bundle, bundle[0], server, phase
	f.gen++
}

func (f *rotAPI) pollCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.polls
}

func (f *rotAPI) auth(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 && r.Header.Get("Authorization") != "Bearer "+f.token {
			writeAPIStatus(w, http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "Unauthorized")
			return
		}
		next(w, r)
	}
}

func writeAPIStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure",
		Code: int32(code), Reason: reason, Message: msg})
}

func writeAPIObject(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (f *rotAPI) create(w http.ResponseWriter, r *http.Request) {
	var obj certv1.CertificateSigningRequest
	if err := json.NewDecoder(r.Body).Decode(&obj); err != nil {
		writeAPIStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	blk, _ := pem.Decode(obj.Spec.Request)
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		writeAPIStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old := f.csrs[obj.Name]; old != nil {
		writeAPIStatus(w, http.StatusConflict, metav1.StatusReasonAlreadyExists, "exists")
		return
	}
	life := time.Hour
	if obj.Spec.ExpirationSeconds != nil {
		life = time.Duration(*obj.Spec.ExpirationSeconds) * time.Second
	}
	eku := x509.ExtKeyUsageClientAuth
	if obj.Spec.SignerName == "kubernetes.io/kubelet-serving" {
		eku = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: req.Subject,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(life), ExtKeyUsage: []x509.ExtKeyUsage{eku},
		DNSNames: req.DNSNames, IPAddresses: req.IPAddresses}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.active.cert, req.PublicKey, f.active.key)
	require.NoError(f.t, err)
	obj.UID = types.UID(fmt.Sprint(time.Now().UnixNano()))
	obj.ResourceVersion = "1"
	obj.Status.Conditions = []certv1.CertificateSigningRequestCondition{{Type: certv1.CertificateApproved,
		Status: corev1.ConditionTrue, Reason: "AutoApproved"}}
	obj.Status.Certificate = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	f.csrs[obj.Name] = &obj
	writeAPIObject(w, http.StatusCreated, &obj)
}

func (f *rotAPI) get(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.csrs[r.PathValue("name")]
	if c == nil {
		writeAPIStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "not found")
		return
	}
	writeAPIObject(w, http.StatusOK, c)
}

func (f *rotAPI) configMap(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polls++
	if f.noBundle {
		writeAPIStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "configmaps \"nodetrust-trust-bundle\" not found")
		return
	}
	var b []byte
	for _, c := range f.cas {
		b = append(b, c.pem...)
	}
	gen := strconv.FormatUint(f.gen, 10)
	writeAPIObject(w, http.StatusOK, &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{Kind: "ConfigMap", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "nodetrust-trust-bundle", Namespace: "kube-public", ResourceVersion: gen},
		Data:       map[string]string{"ca.crt": string(b), "active": bootstrap.SPKIPin(f.active.cert), "phase": f.phase, "generation": gen},
	})
}
