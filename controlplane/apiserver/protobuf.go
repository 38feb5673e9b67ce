package apiserver

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/nodetrust/nodetrust/controlplane/csrs"
)

// protobufType is the Kubernetes protobuf media type. client-go's typed
// clients send request bodies in it and ask for answers in it first
// ("Accept: application/vnd.kubernetes.protobuf,application/json").
const protobufType = "application/vnd.kubernetes.protobuf"

// protobufWatchType is the media type of a protobuf watch stream: each
// event a metav1.WatchEvent, length-prefixed (4 bytes, big endian), whose
// object is a protobuf body as below.
const protobufWatchType = protobufType + ";stream=watch"

// protobufMagic starts every Kubernetes protobuf body, which is then a
// runtime.Unknown envelope holding the object's type and bytes.
var protobufMagic = []byte("k8s\x00")

func decodeProtobufCSR(b []byte) (*certv1.CertificateSigningRequest, error) {
	var unk runtime.Unknown
	if err := unk.Unmarshal(bytes.TrimPrefix(b, protobufMagic)); err != nil {
		return nil, apierrors.NewBadRequest("decode protobuf envelope: " + err.Error())
	}
	if unk.Kind != csrs.KindName || unk.APIVersion != csrs.APIVersion {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("body is %s %s; want %s %s", unk.APIVersion, unk.Kind, csrs.APIVersion, csrs.KindName))
	}
	var c certv1.CertificateSigningRequest
	if err := c.Unmarshal(unk.Raw); err != nil {
		return nil, apierrors.NewBadRequest("decode protobuf CertificateSigningRequest: " + err.Error())
	}
	return &c, nil
}

// wantsProtobuf reports whether the Accept header prefers protobuf to
// JSON: the media range with the highest q among the two (and */*, which
// means JSON here) decides, the earlier one on a tie.
func wantsProtobuf(r *http.Request) bool {
	best, bestQ := "", -1.0
	for _, h := range r.Header.Values("Accept") {
		for _, part := range strings.Split(h, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			q := 1.0
			if v, ok := params["q"]; ok {
				if q, err = strconv.ParseFloat(v, 64); err != nil {
					continue
				}
			}
			switch mt {
			case protobufType, "application/json", "*/*", "application/*":
				if q > bestQ {
					best, bestQ = mt, q
				}
			}
		}
	}
	return best == protobufType && bestQ > 0
}

// marshalProtobufCSR returns c as a protobuf body.
func marshalProtobufCSR(c *certv1.CertificateSigningRequest) ([]byte, error) {
	raw, err := c.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode protobuf CertificateSigningRequest: %w", err)
	}
	return marshalProtobuf(csrs.APIVersion, csrs.KindName, raw)
}

func marshalProtobuf(apiVersion, kind string, raw []byte) ([]byte, error) {
	unk := runtime.Unknown{TypeMeta: runtime.TypeMeta{APIVersion: apiVersion, Kind: kind}, Raw: raw}
	b := make([]byte, len(protobufMagic), len(protobufMagic)+unk.Size())
	copy(b, protobufMagic)
	n, err := unk.MarshalToSizedBuffer(b[len(b):cap(b)])
	if err != nil {
		return nil, fmt.Errorf("encode protobuf envelope: %w", err)
	}
	return b[:len(b)+n], nil
}

// appendProtobufWatchEvent appends one framed event of a protobuf watch
// stream to b.
func appendProtobufWatchEvent(b []byte, typ string, obj []byte) ([]byte, error) {
	ev := metav1.WatchEvent{Type: typ, Object: runtime.RawExtension{Raw: obj}}
	n := ev.Size()
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	start := len(b)
	b = append(b, make([]byte, n)...)
	if _, err := ev.MarshalToSizedBuffer(b[start:]); err != nil {
		return nil, fmt.Errorf("encode protobuf watch event: %w", err)
	}
	return b, nil
}

// protobufStatus returns st as a protobuf body.
func protobufStatus(st *metav1.Status) ([]byte, error) {
	raw, err := st.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode protobuf Status: %w", err)
	}
	return marshalProtobuf("v1", "Status", raw)
}
