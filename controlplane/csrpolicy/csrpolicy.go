// Package csrpolicy holds the rules a certificate signing request must meet
// for each signer the control plane serves. The API, the approver and the
// signer process each apply them on their own.
package csrpolicy

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	certv1 "k8s.io/api/certificates/v1"
)

// The signers the control plane serves.
const (
	SignerKubeletClient   = "kubernetes.io/kube-apiserver-client-kubelet"
	SignerKubeletServing  = "kubernetes.io/kubelet-serving"
	SignerAPIServerClient = "kubernetes.io/kube-apiserver-client"
)

// Well-known identities.
const (
	NodeUserPrefix   = "system:node:"
	NodesGroup       = "system:nodes"
	BootstrapGroup   = "system:bootstrappers"
	BootstrapPrefix  = "system:bootstrap:"
	MastersGroup     = "system:masters"
	AuthenticatedGrp = "system:authenticated"
)

// Duration bounds.
const (
	MinDuration     = 10 * time.Minute
	DefaultDuration = 365 * 24 * time.Hour
)

// ErrPolicy is wrapped by every rule violation.
var ErrPolicy = errors.New("certificate request violates signer policy")

func violation(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrPolicy, fmt.Sprintf(format, args...))
}

// Served reports whether the control plane signs for signerName.
func Served(signerName string) bool {
	switch signerName {
	case SignerKubeletClient, SignerKubeletServing, SignerAPIServerClient:
		return true
	}
	return false
}

// NodeName returns the node name of a "system:node:<name>" user or CN.
func NodeName(user string) (string, bool) {
	n, ok := strings.CutPrefix(user, NodeUserPrefix)
	return n, ok && n != ""
}

// Validate checks req and usages against the rules of signerName.
func Validate(signerName string, req *x509.CertificateRequest, usages []certv1.KeyUsage) error {
	if err := checkKey(req); err != nil {
		return err
	}
	switch signerName {
	case SignerKubeletClient:
		return ValidateKubeletClient(req, usages)
	case SignerKubeletServing:
		return ValidateKubeletServing(req, usages)
	case SignerAPIServerClient:
		return validateAPIServerClient(req, usages)
	}
	return violation("signer %q is not served by this control plane", signerName)
}

func checkKey(req *x509.CertificateRequest) error {
	switch k := req.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return violation("ECDSA key on curve %s; want P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return violation("RSA key of %d bits; want at least 2048", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return violation("unsupported public key type %T", req.PublicKey)
	}
	return nil
}

func noSANs(req *x509.CertificateRequest) error {
	if len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses)+len(req.URIs) > 0 {
		return violation("subject alternative names are not allowed for this signer")
	}
	return nil
}

func nodeSubject(req *x509.CertificateRequest) error {
	if !slices.Equal(req.Subject.Organization, []string{NodesGroup}) {
		return violation("subject organization is %q; want exactly [%q]", req.Subject.Organization, NodesGroup)
	}
	if _, ok := NodeName(req.Subject.CommonName); !ok {
		return violation("subject common name %q does not start with %q", req.Subject.CommonName, NodeUserPrefix)
	}
	return nil
}

func sameSet(got []certv1.KeyUsage, want ...certv1.KeyUsage) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			return false
		}
	}
	return true
}

// ValidateKubeletClient applies the checks kube-controller-manager makes
// before auto-approving a kubelet client certificate.
func ValidateKubeletClient(req *x509.CertificateRequest, usages []certv1.KeyUsage) error {
	if err := nodeSubject(req); err != nil {
		return err
	}
	if err := noSANs(req); err != nil {
		return err
	}
	_, isRSA := req.PublicKey.(*rsa.PublicKey)
	ok := sameSet(usages, certv1.UsageDigitalSignature, certv1.UsageKeyEncipherment, certv1.UsageClientAuth) ||
		!isRSA && sameSet(usages, certv1.UsageDigitalSignature, certv1.UsageClientAuth)
	if !ok {
		return violation("usages %q; want {digital signature, key encipherment, client auth} or, for non-RSA keys, {digital signature, client auth}", usages)
	}
	return nil
}

// ValidateKubeletServing checks a kubelet serving certificate request:
// node subject, at least one DNS or IP name, no email or URI names, and
// server auth with at most digital signature and key encipherment beside.
func ValidateKubeletServing(req *x509.CertificateRequest, usages []certv1.KeyUsage) error {
	if err := nodeSubject(req); err != nil {
		return err
	}
	if len(req.DNSNames)+len(req.IPAddresses) == 0 {
		return violation("a serving certificate needs at least one DNS or IP subject alternative name")
	}
	if len(req.EmailAddresses)+len(req.URIs) > 0 {
		return violation("email and URI subject alternative names are not allowed for a serving certificate")
	}
	if !slices.Contains(usages, certv1.UsageServerAuth) {
		return violation("usages %q lack %q", usages, certv1.UsageServerAuth)
	}
	for _, u := range usages {
		if u != certv1.UsageServerAuth && u != certv1.UsageDigitalSignature && u != certv1.UsageKeyEncipherment {
			return violation("usage %q is not allowed for a serving certificate", u)
		}
	}
	return nil
}

func validateAPIServerClient(req *x509.CertificateRequest, usages []certv1.KeyUsage) error {
	if slices.Contains(req.Subject.Organization, MastersGroup) {
		return violation("organization %q is never signed through a request", MastersGroup)
	}
	if req.Subject.CommonName == "" {
		return violation("subject common name is empty")
	}
	if !slices.Contains(usages, certv1.UsageClientAuth) {
		return violation("usages %q lack %q", usages, certv1.UsageClientAuth)
	}
	for _, u := range usages {
		if u != certv1.UsageClientAuth && u != certv1.UsageDigitalSignature && u != certv1.UsageKeyEncipherment {
			return violation("usage %q is not allowed for a client certificate", u)
		}
	}
	return nil
}

// KeyUsages maps request usages to X.509 key usage and extended key usage.
func KeyUsages(usages []certv1.KeyUsage) (x509.KeyUsage, []x509.ExtKeyUsage, error) {
	var ku x509.KeyUsage
	var eku []x509.ExtKeyUsage
	for _, u := range usages {
		switch u {
		case certv1.UsageDigitalSignature:
			ku |= x509.KeyUsageDigitalSignature
		case certv1.UsageKeyEncipherment:
			ku |= x509.KeyUsageKeyEncipherment
		case certv1.UsageClientAuth:
			eku = append(eku, x509.ExtKeyUsageClientAuth)
		case certv1.UsageServerAuth:
			eku = append(eku, x509.ExtKeyUsageServerAuth)
		default:
			return 0, nil, violation("usage %q is not supported", u)
		}
	}
	return ku, eku, nil
}

// Duration returns how long a certificate is valid: the requested
// expirationSeconds cut to max, or max when none was requested. Requests
// below MinDuration are refused.
func Duration(expirationSeconds *int32, max time.Duration) (time.Duration, error) {
	if max <= 0 {
		max = DefaultDuration
	}
	if expirationSeconds == nil {
		return max, nil
	}
	d := time.Duration(*expirationSeconds) * time.Second
	if d < MinDuration {
		return 0, violation("expirationSeconds %d is below the minimum of %d", *expirationSeconds, int(MinDuration/time.Second))
	}
	return min(d, max), nil
}

// Condition returns the condition of type t, or nil.
func Condition(st certv1.CertificateSigningRequestStatus, t certv1.RequestConditionType) *certv1.CertificateSigningRequestCondition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == t && st.Conditions[i].Status != "False" {
			return &st.Conditions[i]
		}
	}
	return nil
}

// State summarises a request's status.
type State int

// The states of a request.
const (
	Pending State = iota
	Approved
	Issued
	Denied
	Failed
)

// StateOf returns the state of a request.
func StateOf(st certv1.CertificateSigningRequestStatus) State {
	switch {
	case Condition(st, certv1.CertificateDenied) != nil:
		return Denied
	case Condition(st, certv1.CertificateFailed) != nil:
		return Failed
	case len(st.Certificate) > 0:
		return Issued
	case Condition(st, certv1.CertificateApproved) != nil:
		return Approved
	}
	return Pending
}

// IsNodeUser reports whether user is a node identity.
func IsNodeUser(user string) bool {
	_, ok := NodeName(user)
	return ok
}
