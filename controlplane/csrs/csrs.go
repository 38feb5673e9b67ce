// Package csrs stores CertificateSigningRequest objects in the store as
// the JSON kube-apiserver serves, with metadata.resourceVersion kept equal
// to the store's resource version.
package csrs

import (
	"encoding/json"
	"fmt"
	"strconv"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/nodetrust/nodetrust/controlplane/store"
)

// Kind is the store kind of requests.
const Kind = "certificatesigningrequest"

// TypeMeta values of a request.
const (
	APIVersion = "certificates.k8s.io/v1"
	KindName   = "CertificateSigningRequest"
)

// Decode parses a stored request.
func Decode(o store.Object) (*certv1.CertificateSigningRequest, error) {
	var c certv1.CertificateSigningRequest
	if err := json.Unmarshal(o.Data, &c); err != nil {
		return nil, fmt.Errorf("decode stored request %q: %w", o.Name, err)
	}
	return &c, nil
}

func encode(c *certv1.CertificateSigningRequest, rv uint64) ([]byte, error) {
	c.APIVersion, c.Kind = APIVersion, KindName
	c.ResourceVersion = strconv.FormatUint(rv, 10)
	return json.Marshal(c)
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
	o, err := st.Create(Kind, c.Name, func(rv uint64) ([]byte, error) { return encode(c, rv) })
	return o.Data, err
}

// Update applies fn to the current request and stores the result. An
// error from fn is returned and nothing is stored.
func Update(st *store.Store, name string, fn func(c *certv1.CertificateSigningRequest) error) (*certv1.CertificateSigningRequest, error) {
	var out *certv1.CertificateSigningRequest
	_, err := st.Update(Kind, name, func(cur store.Object, rv uint64) ([]byte, error) {
		c, err := Decode(cur)
		if err != nil {
			return nil, err
		}
		if err := fn(c); err != nil {
			return nil, err
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
