// Package csr is the agent's client for the Kubernetes certificates.k8s.io/v1
// CertificateSigningRequest API. It creates a request signed by the
// caller's key under a deterministic name, re-attaches to that request
// after a restart instead of posting another, and waits for the signed
// certificate with a watch, falling back to polling, within a bounded time.
//
// It speaks plain HTTPS and JSON, so it works against any kube-apiserver
// as well as nodetrust's control plane, and keeps k8s.io/client-go out of
// the agent binary. Use ClientRequest or ServingRequest to build the
// kubelet-shaped request, then Client.Request.
package csr

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/nodetrust/nodetrust/internal/clock"
)

// The kubelet's signers.
const (
	SignerKubeletClient  = "kubernetes.io/kube-apiserver-client-kubelet"
	SignerKubeletServing = "kubernetes.io/kubelet-serving"
)

// Defaults and limits.
const (
	// DefaultWaitTimeout bounds one Request, as the kubelet bounds a
	// rotation attempt.
	DefaultWaitTimeout = 15 * time.Minute
	// DefaultPollInterval is the polling period when the watch is
	// unavailable; each wait is jittered up to 20% longer.
	DefaultPollInterval = 2 * time.Second
	// MinDuration is the shortest certificate lifetime the API accepts in
	// spec.expirationSeconds.
	MinDuration = 10 * time.Minute
	// MaxResponse bounds the bytes read from one response body or one watch
	// event.
	MaxResponse = 4 << 20
)

// Errors matched with errors.Is.
var (
	// ErrDenied means an approver denied the request; the error is a
	// *ConditionError with the reason and message.
	ErrDenied = errors.New("certificate signing request denied")
	// ErrFailed means the signer failed the request; the error is a
	// *ConditionError with the reason and message.
	ErrFailed = errors.New("certificate signing request failed")
	// ErrDeleted means the request was deleted, or replaced by another of
	// the same name, while being waited for.
	ErrDeleted = errors.New("certificate signing request deleted")
	// ErrTimeout means no certificate was issued within WaitTimeout.
	ErrTimeout = errors.New("timed out waiting for the certificate")
	// ErrUnauthorized means the API rejected the credentials (HTTP 401):
	// the token or certificate is unknown or expired, so the caller should
	// bootstrap again.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden means the API refused the call (HTTP 403); the error
	// is an *APIError with the API's message.
	ErrForbidden = errors.New("forbidden")
	// ErrIncompatible means a request of the same name already exists and
	// cannot be reused: another key, subject, signer or usages, denied,
	// failed, unreadable by this caller, or holding an expired
	// certificate. The caller should retry with a new key.
	ErrIncompatible = errors.New("existing certificate signing request is incompatible")
	// ErrBadCertificate means the issued certificate does not parse or is
	// not for the request's key.
	ErrBadCertificate = errors.New("issued certificate does not match the request")
)

// Client creates certificate signing requests and waits for their
// certificates. Its zero value is not useful: set Server. Fields must not
// change while a Request runs; one Client may serve concurrent Requests.
type Client struct {
	// Server is the API's base URL, https://host:port.
	Server string
	// HTTPClient sends the requests; nil means http.DefaultClient. Its TLS
	// configuration should trust the cluster CA (RootCAs) and, to
	// authenticate with the current certificate, set GetClientCertificate.
	// A Timeout, if set, must exceed the watch period (5 to 6 minutes) or
	// watches are cut short.
	HTTPClient *http.Client
	// Token is a bearer token (a bootstrap token), or "" to authenticate
	// with the client certificate alone. It is never logged.
	Token string
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
	// Clock drives every timeout, backoff and poll; nil means the real
	// clock.
	Clock clock.Clock
	// WaitTimeout bounds a whole Request; 0 means DefaultWaitTimeout. The
	// kubelet waits 15 minutes per rotation and 1 hour for its first
	// certificate.
	WaitTimeout time.Duration
	// PollInterval is the period of the GET polling used when watching is
	// not possible, and the pause before watching again after a watch
	// failed; 0 means DefaultPollInterval.
	PollInterval time.Duration
}

// Request describes a certificate signing request.
type Request struct {
	// Key signs the request, and its public key goes into the certificate.
	// Normally ECDSA P-256.
	Key crypto.Signer
	// Subject is the certificate's subject: for a node,
	// CN=system:node:<name>, O=system:nodes.
	Subject pkix.Name
	// DNSNames and IPAddresses are the subject alternative names, for
	// serving certificates.
	DNSNames    []string
	IPAddresses []net.IP
	// Usages are the requested key usages.
	Usages []certv1.KeyUsage
	// SignerName is the signer, e.g. SignerKubeletClient.
	SignerName string
	// Duration is the requested lifetime (spec.expirationSeconds), at least
	// MinDuration; 0 leaves it to the signer. Signers may shorten or ignore
	// it: read the lifetime from the issued certificate.
	Duration time.Duration
	// Name is the request's name; "" means Name(Key.Public(), Subject,
	// Usages), so that the same key always maps to the same request.
	Name string
}

// ClientRequest returns the kubelet's client certificate request for
// nodeName: CN=system:node:<nodeName>, O=system:nodes, no SANs, usages
// digital signature and client auth (plus key encipherment for RSA keys),
// signer SignerKubeletClient. These are exactly what Kubernetes'
// approver auto-approves.
func ClientRequest(nodeName string, key crypto.Signer) Request {
	return Request{
		Key:        key,
		Subject:    nodeSubject(nodeName),
		Usages:     usagesFor(key, certv1.UsageClientAuth),
		SignerName: SignerKubeletClient,
	}
}

// ServingRequest returns the kubelet's serving certificate request for
// nodeName with the given SANs: usages digital signature and server auth
// (plus key encipherment for RSA keys), signer SignerKubeletServing.
func ServingRequest(nodeName string, key crypto.Signer, dnsNames []string, ips []net.IP) Request {
	return Request{
		Key:         key,
		Subject:     nodeSubject(nodeName),
		DNSNames:    slices.Clone(dnsNames),
		IPAddresses: slices.Clone(ips),
		Usages:      usagesFor(key, certv1.UsageServerAuth),
		SignerName:  SignerKubeletServing,
	}
}

func nodeSubject(nodeName string) pkix.Name {
	return pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}}
}

func usagesFor(key crypto.Signer, auth certv1.KeyUsage) []certv1.KeyUsage {
	u := []certv1.KeyUsage{certv1.UsageDigitalSignature}
	if key != nil {
		if _, ok := key.Public().(*rsa.PublicKey); ok {
			u = append(u, certv1.UsageKeyEncipherment)
		}
	}
	return append(u, auth)
}

// check reports what is wrong with r before anything is sent.
func (r *Request) check() error {
	switch {
	case r.Key == nil:
		return errors.New("request has no key")
	case r.SignerName == "":
		return errors.New("request has no signer name")
	case len(r.Usages) == 0:
		return errors.New("request has no usages")
	case r.Duration < 0 || r.Duration > 0 && r.Duration < MinDuration:
		return fmt.Errorf("requested duration %v is under the minimum of %v", r.Duration, MinDuration)
	case r.Duration/time.Second > math.MaxInt32:
		return fmt.Errorf("requested duration %v is too long", r.Duration)
	}
	return nil
}

// pem returns the PKCS #10 request, PEM-encoded and signed by r.Key.
func (r *Request) pem() ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     r.Subject,
		DNSNames:    r.DNSNames,
		IPAddresses: r.IPAddresses,
	}, r.Key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ConditionError is a request's Denied or Failed condition. errors.Is
// matches it to ErrDenied or ErrFailed.
type ConditionError struct {
	Name    string                      // the request's name
	Type    certv1.RequestConditionType // Denied or Failed
	Reason  string
	Message string
}

func (e *ConditionError) Error() string {
	s := fmt.Sprintf("certificate signing request %q %s", e.Name, strings.ToLower(string(e.Type)))
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap returns ErrDenied or ErrFailed.
func (e *ConditionError) Unwrap() error {
	if e.Type == certv1.CertificateDenied {
		return ErrDenied
	}
	return ErrFailed
}
