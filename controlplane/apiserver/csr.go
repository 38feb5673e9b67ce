package apiserver

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"

	pathvalidation "k8s.io/apimachinery/pkg/api/validation/path"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/csrs"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/controlplane/store"
)

func typesUID(s string) types.UID { return types.UID(s) }

func notFoundPath(p string) error {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusNotFound, Reason: metav1.StatusReasonNotFound,
		Message: fmt.Sprintf("the server could not find the requested resource (path %s)", p),
	}}
}

func newUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

const nameChars = "bcdfghjklmnpqrstvwxz2456789"

func randomSuffix() string {
	b := make([]byte, 5)
	rand.Read(b)
	for i := range b {
		b[i] = nameChars[int(b[i])%len(nameChars)]
	}
	return string(b)
}

// readBody reads a JSON body within the size limit.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" && mt != protobufType {
			return nil, apierrors.NewGenericServerResponse(http.StatusUnsupportedMediaType, r.Method, csrResource, "",
				fmt.Sprintf("content type %q is not supported; send application/json", ct), 0, false)
		}
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, apierrors.NewRequestEntityTooLargeError(fmt.Sprintf("request body is over the limit of %d bytes", s.cfg.MaxBody))
		}
		return nil, apierrors.NewBadRequest("read request body: " + err.Error())
	}
	return b, nil
}

func decodeCSR(b []byte) (*certv1.CertificateSigningRequest, error) {
	if bytes.HasPrefix(b, protobufMagic) {
		return decodeProtobufCSR(b)
	}
	var c certv1.CertificateSigningRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&c); err != nil {
		return nil, apierrors.NewBadRequest("decode CertificateSigningRequest: " + err.Error())
	}
	if dec.More() {
		return nil, apierrors.NewBadRequest("decode CertificateSigningRequest: trailing data after the object")
	}
	if c.Kind != "" && c.Kind != csrs.KindName || c.APIVersion != "" && c.APIVersion != csrs.APIVersion {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("body is %s %s; want %s %s", c.APIVersion, c.Kind, csrs.APIVersion, csrs.KindName))
	}
	return &c, nil
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	u := userFrom(r.Context())
	b, err := s.readBody(w, r)
	if err != nil {
		writeStatus(w, err)
		return
	}
	c, err := decodeCSR(b)
	if err != nil {
		writeStatus(w, err)
		return
	}
	if c.Name == "" && c.GenerateName != "" {
		c.Name = c.GenerateName + randomSuffix()
	}
	if err := s.validateCreate(u, c); err != nil {
		s.log.Info("refused request", "csr", c.Name, "user", u.Name, "err", err)
		writeStatus(w, err)
		return
	}
	now := metav1.NewTime(s.clk.Now())
	c.UID = types.UID(newUID())
	c.CreationTimestamp = now
	c.ResourceVersion, c.ManagedFields, c.DeletionTimestamp, c.Generation = "", nil, nil, 0
	c.Spec.Username, c.Spec.UID, c.Spec.Groups, c.Spec.Extra = u.Name, u.UID, u.Groups, nil
	c.Status = certv1.CertificateSigningRequestStatus{}
	data, err := csrs.Create(s.cfg.Store, c)
	if err != nil {
		if errors.Is(err, store.ErrExists) {
			writeStatus(w, apierrors.NewAlreadyExists(csrResource, c.Name))
			return
		}
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	if wantsProtobuf(r) {
		if pb, err := marshalProtobufCSR(c); err == nil {
			writeBody(w, http.StatusCreated, protobufType, pb)
			return
		}
	}
	writeRaw(w, http.StatusCreated, data)
}

// validateCreate checks a new request's content (422), and who may ask for
// it (403).
func (s *Server) validateCreate(u *user, c *certv1.CertificateSigningRequest) error {
	var errs field.ErrorList
	if c.Name == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "name"), "name or generateName is required"))
	} else if msgs := pathvalidation.ValidatePathSegmentName(c.Name, false); len(msgs) > 0 {
		// As kube-apiserver: a CSR name need only be a path segment, so the
		// kubelet's node-csr-<base64url> names are accepted.
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), c.Name, strings.Join(msgs, "; ")))
	}
	specPath := field.NewPath("spec")
	req, err := pki.ParseCSR(c.Spec.Request)
	if err != nil {
		errs = append(errs, field.Invalid(specPath.Child("request"), "<PEM>", err.Error()))
	}
	if c.Spec.SignerName == "" {
		errs = append(errs, field.Required(specPath.Child("signerName"), "signerName is required"))
	} else if !csrpolicy.Served(c.Spec.SignerName) {
		errs = append(errs, field.NotSupported(specPath.Child("signerName"), c.Spec.SignerName,
			[]string{csrpolicy.SignerKubeletClient, csrpolicy.SignerKubeletServing, csrpolicy.SignerAPIServerClient}))
	}
	if len(c.Spec.Usages) == 0 {
		errs = append(errs, field.Required(specPath.Child("usages"), "usages are required"))
	} else if _, _, err := csrpolicy.KeyUsages(c.Spec.Usages); err != nil {
		errs = append(errs, field.Invalid(specPath.Child("usages"), c.Spec.Usages, err.Error()))
	}
	if c.Spec.ExpirationSeconds != nil {
		if _, err := csrpolicy.Duration(c.Spec.ExpirationSeconds, 0); err != nil {
			errs = append(errs, field.Invalid(specPath.Child("expirationSeconds"), *c.Spec.ExpirationSeconds, "may not specify a duration less than 600 seconds (10 minutes)"))
		}
	}
	if len(errs) == 0 {
		if err := csrpolicy.Validate(c.Spec.SignerName, req, c.Spec.Usages); err != nil {
			errs = append(errs, field.Invalid(specPath.Child("request"), "<PEM>", err.Error()))
		}
	}
	if len(errs) > 0 {
		return apierrors.NewInvalid(csrKind, c.Name, errs)
	}
	return s.authorizeCreate(u, c, req)
}

// authorizeCreate: admins may ask for anything; bootstrappers for kubelet
// client certificates; nodes for their own client and serving
// certificates, serving names only when they own them.
func (s *Server) authorizeCreate(u *user, c *certv1.CertificateSigningRequest, x *x509.CertificateRequest) error {
	if u.admin() {
		return nil
	}
	forbid := func(format string, args ...any) error {
		return apierrors.NewForbidden(csrResource, c.Name, fmt.Errorf(format, args...))
	}
	if node, ok := csrpolicy.NodeName(u.Name); ok && u.in(csrpolicy.NodesGroup) {
		if x.Subject.CommonName != u.Name {
			return forbid("node %q may not request a certificate for %q", node, x.Subject.CommonName)
		}
		switch c.Spec.SignerName {
		case csrpolicy.SignerKubeletClient:
			return nil
		case csrpolicy.SignerKubeletServing:
			if s.cfg.Registry == nil {
				return forbid("no instance registry to check the names of node %q against", node)
			}
			if err := s.cfg.Registry.CheckOwned(node, x.IPAddresses, x.DNSNames); err != nil {
				return forbid("%v", err)
			}
			return nil
		}
		return forbid("node %q may not use signer %q", node, c.Spec.SignerName)
	}
	if u.in(csrpolicy.BootstrapGroup) {
		if c.Spec.SignerName != csrpolicy.SignerKubeletClient {
			return forbid("bootstrap user %q may only request %q certificates", u.Name, csrpolicy.SignerKubeletClient)
		}
		return nil
	}
	return forbid("user %q may not create certificate signing requests", u.Name)
}

// mayRead reports whether u may see c: admins see all, others their own.
func mayRead(u *user, c *certv1.CertificateSigningRequest) bool {
	return u.admin() || c.Spec.Username == u.Name
}

func (s *Server) canReadAny(u *user) bool {
	return u.admin() || u.in(csrpolicy.BootstrapGroup) || u.in(csrpolicy.NodesGroup)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	u := userFrom(r.Context())
	name, sub := r.PathValue("name"), r.PathValue("sub")
	if sub != "" && sub != "approval" && sub != "status" {
		writeStatus(w, notFoundPath(r.URL.Path))
		return
	}
	if !s.canReadAny(u) {
		writeStatus(w, apierrors.NewForbidden(csrResource, name, fmt.Errorf("user %q may not read certificate signing requests", u.Name)))
		return
	}
	o, err := s.cfg.Store.Get(csrs.Kind, name)
	if err != nil {
		writeStatus(w, apierrors.NewNotFound(csrResource, name))
		return
	}
	if !u.admin() {
		c, err := csrs.View(o)
		if err != nil {
			writeStatus(w, apierrors.NewInternalError(err))
			return
		}
		if !mayRead(u, c) {
			writeStatus(w, apierrors.NewForbidden(csrResource, name, fmt.Errorf("user %q may read only its own requests", u.Name)))
			return
		}
	}
	writeRaw(w, http.StatusOK, o.Data)
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	u := userFrom(r.Context())
	name := r.PathValue("name")
	if !u.admin() {
		writeStatus(w, apierrors.NewForbidden(csrResource, name, fmt.Errorf("user %q may not delete certificate signing requests", u.Name)))
		return
	}
	c, err := csrs.Delete(s.cfg.Store, name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeStatus(w, apierrors.NewNotFound(csrResource, name))
			return
		}
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	writeJSON(w, http.StatusOK, successStatus(name, string(c.UID)))
}

// update handles PUT of the object (labels and annotations), of
// /approval (Approved and Denied conditions) and of /status (certificate
// and Failed condition). Only admins may call them.
func (s *Server) update(w http.ResponseWriter, r *http.Request) {
	u := userFrom(r.Context())
	name, sub := r.PathValue("name"), r.PathValue("sub")
	if sub != "" && sub != "approval" && sub != "status" {
		writeStatus(w, notFoundPath(r.URL.Path))
		return
	}
	if !u.admin() {
		writeStatus(w, apierrors.NewForbidden(csrResource, name, fmt.Errorf("user %q may not update certificate signing requests", u.Name)))
		return
	}
	b, err := s.readBody(w, r)
	if err != nil {
		writeStatus(w, err)
		return
	}
	in, err := decodeCSR(b)
	if err != nil {
		writeStatus(w, err)
		return
	}
	if in.Name != name {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("name %q in the body does not match %q in the path", in.Name, name)))
		return
	}
	now := metav1.NewTime(s.clk.Now())
	out, err := csrs.Update(s.cfg.Store, name, func(cur *certv1.CertificateSigningRequest) error {
		if in.ResourceVersion != "" && in.ResourceVersion != cur.ResourceVersion {
			return apierrors.NewConflict(csrResource, name, fmt.Errorf("the object has been modified; please apply your changes to the latest version and try again"))
		}
		switch sub {
		case "":
			cur.Labels, cur.Annotations = in.Labels, in.Annotations
		case "approval":
			return applyApproval(cur, in, now)
		case "status":
			return applyStatus(cur, in, now)
		}
		return nil
	})
	if err != nil {
		var se apierrors.APIStatus
		switch {
		case errors.As(err, &se):
			writeStatus(w, err)
		case errors.Is(err, store.ErrNotFound):
			writeStatus(w, apierrors.NewNotFound(csrResource, name))
		default:
			writeStatus(w, apierrors.NewInternalError(err))
		}
		return
	}
	s.log.Info("request updated", "csr", name, "subresource", sub, "user", u.Name)
	writeJSON(w, http.StatusOK, out)
}

func applyApproval(cur, in *certv1.CertificateSigningRequest, now metav1.Time) error {
	path := field.NewPath("status", "conditions")
	var conds []certv1.CertificateSigningRequestCondition
	for i, c := range in.Status.Conditions {
		if c.Type != certv1.CertificateApproved && c.Type != certv1.CertificateDenied {
			return apierrors.NewInvalid(csrKind, cur.Name, field.ErrorList{field.NotSupported(path.Index(i).Child("type"), c.Type, []string{"Approved", "Denied"})})
		}
		if c.Status == "" {
			c.Status = "True"
		}
		if c.LastUpdateTime.IsZero() {
			c.LastUpdateTime = now
		}
		if c.LastTransitionTime.IsZero() {
			c.LastTransitionTime = now
		}
		conds = append(conds, c)
	}
	next := cur.Status
	next.Conditions = slices.DeleteFunc(slices.Clone(cur.Status.Conditions), func(c certv1.CertificateSigningRequestCondition) bool {
		return c.Type == certv1.CertificateApproved || c.Type == certv1.CertificateDenied
	})
	next.Conditions = append(next.Conditions, conds...)
	approved := csrpolicy.Condition(next, certv1.CertificateApproved) != nil
	denied := csrpolicy.Condition(next, certv1.CertificateDenied) != nil
	if approved && denied {
		return apierrors.NewInvalid(csrKind, cur.Name, field.ErrorList{field.Invalid(path, "Approved,Denied", "Approved and Denied conditions are mutually exclusive")})
	}
	for _, t := range []certv1.RequestConditionType{certv1.CertificateApproved, certv1.CertificateDenied} {
		if csrpolicy.Condition(cur.Status, t) != nil && csrpolicy.Condition(next, t) == nil {
			return apierrors.NewInvalid(csrKind, cur.Name, field.ErrorList{field.Forbidden(path, fmt.Sprintf("the %s condition may not be removed", t))})
		}
	}
	cur.Status = next
	return nil
}

func applyStatus(cur, in *certv1.CertificateSigningRequest, now metav1.Time) error {
	path := field.NewPath("status")
	if len(in.Status.Certificate) > 0 {
		if _, err := pki.ParseCerts(in.Status.Certificate); err != nil {
			return apierrors.NewInvalid(csrKind, cur.Name, field.ErrorList{field.Invalid(path.Child("certificate"), "<PEM>", err.Error())})
		}
		if csrpolicy.Condition(cur.Status, certv1.CertificateApproved) == nil {
			return apierrors.NewInvalid(csrKind, cur.Name, field.ErrorList{field.Forbidden(path.Child("certificate"), "a certificate may only be set on an approved request")})
		}
		if len(cur.Status.Certificate) > 0 && !bytes.Equal(cur.Status.Certificate, in.Status.Certificate) {
			return apierrors.NewInvalid(csrKind, cur.Name, field.ErrorList{field.Forbidden(path.Child("certificate"), "the certificate may not be changed once set")})
		}
		cur.Status.Certificate = in.Status.Certificate
	}
	for _, c := range in.Status.Conditions {
		if c.Type == certv1.CertificateFailed && csrpolicy.Condition(cur.Status, certv1.CertificateFailed) == nil {
			if c.LastUpdateTime.IsZero() {
				c.LastUpdateTime = now
			}
			cur.Status.Conditions = append(cur.Status.Conditions, c)
		}
	}
	return nil
}
