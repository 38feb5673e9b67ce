package signer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The wire protocol on the socket. The client opens a connection and
// sends preamble; then both sides send frames on it, a 4-byte big-endian
// length and that many bytes:
//
//	request:  id (8 bytes) | the CertificateSigningRequest in protobuf
//	answer:   id (8 bytes) | code (1 byte) | body
//
// where the code is codeSigned (body: the certificate PEM), codeRejected
// (body: why the request was refused on its merits) or codeError (body:
// what went wrong). A connection carries many requests at once; answers
// come back in any order, matched by id. The signer decodes and checks
// every request on its own; the framing only replaces HTTP and JSON,
// which cost more than the checks.
//
// Version 2 (preamble2) adds the CA to sign with to each request:
//
//	request:  id (8 bytes) | pin length (1 byte) | pin | the CertificateSigningRequest in protobuf
//
// where an empty pin means the newest CA the signer holds (as in version
// 1). A connection opened with preambleCA carries one CA operation: one
// request frame (caOp JSON) and one answer frame (code | JSON or error
// text), then it is closed.
const preamble = "nodetrust-signer/1\n"

// preamble2 and preambleCA have the length of preamble.
const (
	preamble2  = "nodetrust-signer/2\n"
	preambleCA = "nodetrust-signer/c\n"
)

// Answer codes.
const (
	codeSigned   byte = 0
	codeRejected byte = 1
	codeError    byte = 2
)

// maxFrame bounds a frame, either way.
const maxFrame = 1 << 20

// maxInFlight bounds the requests the signer works on at once per
// connection; it stops reading the connection while that many are open.
const maxInFlight = 256

var errFrameTooBig = errors.New("signer frame over 1 MiB")

// readFrame reads one frame into buf (grown as needed) and returns it.
func readFrame(r *bufio.Reader, buf []byte) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return nil, fmt.Errorf("%w (%d bytes)", errFrameTooBig, n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// appendFrameHeader appends the length of a frame of n bytes.
func appendFrameHeader(b []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(b, uint32(n))
}
