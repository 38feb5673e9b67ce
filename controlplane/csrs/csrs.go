// Package csrs stores CertificateSigningRequest objects in the store as
// the JSON kube-apiserver serves, with metadata.resourceVersion kept equal
// to the store's resource version.
package csrs

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane/store"
)

// Kind is the store kind of requests.
const Kind = "certificatesigningrequest"

// TypeMeta values of a request.
const (
	APIVersion = "certificates.k8s.io/v1"
	KindName   = "CertificateSigningRequest"
)

// Decode returns a stored request, which the caller may modify.
func Decode(o store.Object) (*certv1.CertificateSigningRequest, error) {
	if c, ok := o.Value.(*certv1.CertificateSigningRequest); ok {
		return c.DeepCopy(), nil
	}
	return decodeJSON(o)
}

// View returns a stored request for reading only: it may be the copy the
// store keeps beside the JSON, shared by every reader, and must not be
// modified.
func View(o store.Object) (*certv1.CertificateSigningRequest, error) {
	if c, ok := o.Value.(*certv1.CertificateSigningRequest); ok {
		return c, nil
	}
	return decodeJSON(o)
}

func decodeJSON(o store.Object) (*certv1.CertificateSigningRequest, error) {
	var c certv1.CertificateSigningRequest
	if err := json.Unmarshal(o.Data, &c); err != nil {
		return nil, fmt.Errorf("decode stored request %q: %w", o.Name, err)
	}
	return &c, nil
}

// encode returns c's JSON at resource version rv, and the copy of c the
// store keeps beside it for View and Decode: what decoding the JSON would
// give, so with its times cut to whole seconds as JSON has them.
func encode(c *certv1.CertificateSigningRequest, rv uint64) ([]byte, any, error) {
	c.APIVersion, c.Kind = APIVersion, KindName
	c.ResourceVersion = strconv.FormatUint(rv, 10)
	b, err := json.Marshal(c)
	if err != nil {
		return nil, nil, err
	}
	v := c.DeepCopy()
	wholeSeconds(&v.CreationTimestamp)
	wholeSeconds(v.DeletionTimestamp)
	for i := range v.ManagedFields {
		wholeSeconds(v.ManagedFields[i].Time)
	}
	for i := range v.Status.Conditions {
		wholeSeconds(&v.Status.Conditions[i].LastUpdateTime)
		wholeSeconds(&v.Status.Conditions[i].LastTransitionTime)
	}
	return b, v, nil
}

// wholeSeconds cuts t to the precision of its JSON form (RFC 3339).
func wholeSeconds(t *metav1.Time) {
	if t != nil && !t.IsZero() {
		t.Time = t.Time.Truncate(time.Second)
	}
}

// Get returns the request name.
func Get(st *store.Store, name string) (*certv1.CertificateSigningRequest, error) {
	o, err := st.Get(Kind, name)
	if err != nil {
		return nil, err
	}
	return Decode(o)
}

// Create stores a new request; c gets its resource version. It returns
// the stored JSON.
func Create(st *store.Store, c *certv1.CertificateSigningRequest) ([]byte, error) {
	o, err := st.CreateValue(Kind, c.Name, func(rv uint64) ([]byte, any, error) { return encode(c, rv) })
	return o.Data, err
}

// Update applies fn to the current request and stores the result. An
// error from fn is returned and nothing is stored.
func Update(st *store.Store, name string, fn func(c *certv1.CertificateSigningRequest) error) (*certv1.CertificateSigningRequest, error) {
	var out *certv1.CertificateSigningRequest
	_, err := st.UpdateValue(Kind, name, func(cur store.Object, rv uint64) ([]byte, any, error) {
		c, err := Decode(cur)
		if err != nil {
			return nil, nil, err
		}
		if err := fn(c); err != nil {
			return nil, nil, err
		}
		out = c
		return encode(c, rv)
	})
	return out, err
}

// Delete removes a request.
func Delete(st *store.Store, name string) (*certv1.CertificateSigningRequest, error) {
	o, err := st.Delete(Kind, name, nil)
	if err != nil {
		return nil, err
	}
	c, err := Decode(o)
	if err != nil {
		return nil, err
	}
	c.ResourceVersion = strconv.FormatUint(o.RV, 10)
	return c, nil
}
