package csrs

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane/store"
)

// TestValueMatchesJSON checks that the request the store keeps beside
// the JSON is what decoding the JSON gives, in the encodings it is
// served in (protobuf and JSON), across create and updates with times
// finer than a second, and that Decode hands out copies.
func TestValueMatchesJSON(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.NewTime(time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.FixedZone("x", 3600)))
	exp := int32(3600)
	c := &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "r1", UID: "u1", CreationTimestamp: now, Labels: map[string]string{}, Annotations: map[string]string{"a": "b"}},
		Spec: certv1.CertificateSigningRequestSpec{Request: []byte("-----BEGIN CERTIFICATE REQUEST-----\n"), SignerName: "kubernetes.io/kube-apiserver-client-kubelet",
			ExpirationSeconds: &exp, Usages: []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth},
			Username: "system:bootstrap:abcdef", Groups: []string{"system:bootstrappers", "system:authenticated"}, Extra: map[string]certv1.ExtraValue{}},
	}
	check := func(step string) {
		t.Helper()
		o, err := st.Get(Kind, "r1")
		if err != nil {
			t.Fatal(err)
		}
		if o.Value == nil {
			t.Fatalf("%s: no value kept beside the JSON", step)
		}
		v, _ := View(o)
		d, err := decodeJSON(o)
		if err != nil {
			t.Fatal(err)
		}
		vb, _ := v.Marshal()
		db, _ := d.Marshal()
		if !bytes.Equal(vb, db) {
			t.Errorf("%s: protobuf of the kept value differs from that of the decoded JSON:\n kept %+v\n json %+v", step, v, d)
		}
		// Protobuf drops sub-second times too; compare them directly.
		if !v.CreationTimestamp.Equal(&d.CreationTimestamp) {
			t.Errorf("%s: kept creation time %v, JSON's %v", step, v.CreationTimestamp, d.CreationTimestamp)
		}
		for i := range d.Status.Conditions {
			kc, dc := v.Status.Conditions[i], d.Status.Conditions[i]
			if !kc.LastUpdateTime.Equal(&dc.LastUpdateTime) || !kc.LastTransitionTime.Equal(&dc.LastTransitionTime) {
				t.Errorf("%s: kept condition times %v, %v; JSON's %v, %v", step, kc.LastUpdateTime, kc.LastTransitionTime, dc.LastUpdateTime, dc.LastTransitionTime)
			}
		}
		vj, _ := json.Marshal(v)
		if !bytes.Equal(vj, o.Data) {
			t.Errorf("%s: JSON of the kept value differs from the stored JSON:\n kept %s\n data %s", step, vj, o.Data)
		}
		cp, _ := Decode(o)
		cp.Status.Conditions = append(cp.Status.Conditions, certv1.CertificateSigningRequestCondition{Type: "X"})
		cp.Labels = map[string]string{"changed": "yes"}
		if v2, _ := View(o); len(v2.Status.Conditions) == len(cp.Status.Conditions) || v2.Labels["changed"] != "" {
			t.Errorf("%s: changing a Decode result changed the kept value", step)
		}
	}
	if _, err := Create(st, c); err != nil {
		t.Fatal(err)
	}
	c.Labels["late"] = "change after Create" // the caller's object is not the kept one
	check("create")
	later := metav1.NewTime(now.Add(1500 * time.Millisecond))
	if _, err := Update(st, "r1", func(c *certv1.CertificateSigningRequest) error {
		c.Status.Conditions = append(c.Status.Conditions, certv1.CertificateSigningRequestCondition{
			Type: certv1.CertificateApproved, Status: "True", Reason: "AutoApproved", LastUpdateTime: later, LastTransitionTime: later})
		c.Status.Certificate = []byte("-----BEGIN CERTIFICATE-----\n")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check("update")
	st.Close()

	// After a restart there is no kept value; View and Decode read the JSON.
	st, err = store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	o, _ := st.Get(Kind, "r1")
	v, err := View(o)
	if o.Value != nil || err != nil || v.Status.Conditions[0].LastUpdateTime.Unix() != later.Unix() || v.Labels["late"] != "" {
		t.Errorf("after restart: value %v, view %+v, %v", o.Value, v, err)
	}
}
