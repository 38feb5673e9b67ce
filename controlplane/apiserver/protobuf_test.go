package apiserver

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/scheme"
	restclientwatch "k8s.io/client-go/rest/watch"

	"github.com/nodetrust/nodetrust/controlplane/csrs"
)

func TestWantsProtobuf(t *testing.T) {
	tests := []struct {
		accept []string
		want   bool
	}{
		{nil, false},
		{[]string{"application/json"}, false},
		{[]string{"application/vnd.kubernetes.protobuf,application/json"}, true}, // client-go's typed clients
		{[]string{"application/json, application/vnd.kubernetes.protobuf"}, false},
		{[]string{"application/vnd.kubernetes.protobuf"}, true},
		{[]string{"application/vnd.kubernetes.protobuf;q=0.5, application/json"}, false},
		{[]string{"application/json;q=0.5, application/vnd.kubernetes.protobuf"}, true},
		{[]string{"application/vnd.kubernetes.protobuf;q=0"}, false},
		{[]string{"*/*"}, false},
		{[]string{"application/json, */*"}, false},
		{[]string{"text/html", "application/vnd.kubernetes.protobuf"}, true},
		{[]string{"application/vnd.kubernetes.protobuf;q=bad"}, false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		for _, a := range tt.accept {
			r.Header.Add("Accept", a)
		}
		if got := wantsProtobuf(r); got != tt.want {
			t.Errorf("wantsProtobuf(Accept: %q) = %v, want %v", tt.accept, got, tt.want)
		}
	}
}

// decodeWatch reads a watch stream the way client-go does, choosing the
// decoders from the answer's content type.
func decodeWatch(t *testing.T, rec *httptest.ResponseRecorder) []watch.Event {
	t.Helper()
	ct := rec.Header().Get("Content-Type")
	mt := "application/json"
	if ct == protobufWatchType {
		mt = protobufType
	}
	info, ok := runtime.SerializerInfoForMediaType(scheme.Codecs.SupportedMediaTypes(), mt)
	if !ok || info.StreamSerializer == nil {
		t.Fatalf("no stream serializer for %q", ct)
	}
	fr := info.StreamSerializer.Framer.NewFrameReader(io.NopCloser(rec.Body))
	dec := restclientwatch.NewDecoder(streaming.NewDecoder(fr, info.StreamSerializer.Serializer), scheme.Codecs.UniversalDeserializer())
	var evs []watch.Event
	for {
		typ, obj, err := dec.Decode()
		if err == io.EOF {
			return evs
		}
		if err != nil {
			t.Fatalf("decode %s watch event %d: %v", ct, len(evs), err)
		}
		evs = append(evs, watch.Event{Type: typ, Object: obj})
	}
}

// TestWatchEncodings writes the same events as JSON lines and as a
// protobuf stream and checks client-go's decoders read the same objects
// from both.
func TestWatchEncodings(t *testing.T) {
	c := &certv1.CertificateSigningRequest{
		TypeMeta:   metav1.TypeMeta{Kind: csrs.KindName, APIVersion: csrs.APIVersion},
		ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: "42", UID: "u", Labels: map[string]string{"a": "b"}},
		Spec: certv1.CertificateSigningRequestSpec{Request: []byte("-----BEGIN CERTIFICATE REQUEST-----\n"), SignerName: "kubernetes.io/kube-apiserver-client-kubelet",
			Usages: []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}, Username: "system:bootstrap:abcdef", Groups: []string{"system:bootstrappers"}},
		Status: certv1.CertificateSigningRequestStatus{Certificate: []byte("-----BEGIN CERTIFICATE-----\n"),
			Conditions: []certv1.CertificateSigningRequestCondition{{Type: certv1.CertificateApproved, Status: "True", Reason: "AutoApproved"}}},
	}
	stored, _ := json.Marshal(c)
	st := metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure, Code: http.StatusGone, Reason: metav1.StatusReasonExpired, Message: "too old resource version: 1"}
	var got [2][]watch.Event
	for i, pb := range []bool{false, true} {
		rec := httptest.NewRecorder()
		if pb {
			rec.Header().Set("Content-Type", protobufWatchType)
		} else {
			rec.Header().Set("Content-Type", "application/json")
		}
		ew := &eventWriter{w: rec, protobuf: pb}
		if err := ew.object("ADDED", c, stored); err != nil {
			t.Fatal(err)
		}
		if err := ew.object("DELETED", c, nil); err != nil {
			t.Fatal(err)
		}
		if err := ew.status(&st); err != nil {
			t.Fatal(err)
		}
		got[i] = decodeWatch(t, rec)
	}
	if len(got[1]) != 3 {
		t.Fatalf("protobuf stream has %d events, want 3", len(got[1]))
	}
	if !reflect.DeepEqual(got[0], got[1]) {
		t.Errorf("JSON and protobuf streams differ:\njson     %+v\nprotobuf %+v", got[0], got[1])
	}
	want := c.DeepCopy()
	want.TypeMeta = metav1.TypeMeta{}
	gotCSR, ok := got[1][0].Object.(*certv1.CertificateSigningRequest)
	if !ok {
		t.Fatalf("first event holds %T", got[1][0].Object)
	}
	gotCSR.TypeMeta = metav1.TypeMeta{}
	if !reflect.DeepEqual(want, gotCSR) {
		t.Errorf("decoded request = %+v, want %+v", gotCSR, want)
	}
	if s, ok := got[1][2].Object.(*metav1.Status); got[1][2].Type != watch.Error || !ok || s.Code != http.StatusGone {
		t.Errorf("last event = %s %#v, want ERROR with a 410 Status", got[1][2].Type, got[1][2].Object)
	}
}
