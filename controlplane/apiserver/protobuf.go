package apiserver

import (
	"bytes"
	"fmt"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/nodetrust/nodetrust/controlplane/csrs"
)

// protobufType is the Kubernetes protobuf media type; client-go's typed
// clients send request bodies in it and accept JSON answers.
const protobufType = "application/vnd.kubernetes.protobuf"

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
