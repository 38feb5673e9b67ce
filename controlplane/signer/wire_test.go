package signer

import (
	"bufio"
	"context"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

func newTestSigner(t *testing.T) (*Server, string) {
	t.Helper()
	caKey, _ := pki.GenerateKey()
	ca, err := pki.NewCA("ca", caKey, time.Now(), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{CACert: ca, CAKey: caKey}), filepath.Join(t.TempDir(), "s.sock")
}

// serve runs srv on sock until the returned stop is called.
func serve(t *testing.T, srv *Server, sock string) (stop func()) {
	t.Helper()
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve = %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func approvedCSR(t testing.TB, name string) (*certv1.CertificateSigningRequest, crypto.PublicKey) {
	key, _ := pki.GenerateKey()
	req, err := pki.NewCSR(key, "system:node:"+name, []string{"system:nodes"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: certv1.CertificateSigningRequestSpec{Request: req, SignerName: csrpolicy.SignerKubeletClient,
			Usages: []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}},
		Status: certv1.CertificateSigningRequestStatus{Conditions: []certv1.CertificateSigningRequestCondition{{Type: certv1.CertificateApproved, Status: "True"}}},
	}, key.Public()
}

// TestManyCallsAtOnce sends many requests at once over the client's few
// connections, good and bad mixed, and checks that every answer went to
// its own call: each certificate is for the key and name asked for.
func TestManyCallsAtOnce(t *testing.T) {
	srv, sock := newTestSigner(t)
	serve(t, srv, sock)
	cl := NewClient(sock)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range 600 {
		wg.Go(func() {
			name := fmt.Sprintf("n%d", i)
			csr, pub := approvedCSR(t, name)
			if i%7 == 0 {
				csr.Status = certv1.CertificateSigningRequestStatus{} // not approved
			}
			pemCert, err := cl.Sign(ctx, csr)
			if i%7 == 0 {
				if !errors.Is(err, ErrRejected) {
					t.Errorf("%s, not approved: %v, want ErrRejected", name, err)
				}
				return
			}
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			certs, err := pki.ParseCerts(pemCert)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			if certs[0].Subject.CommonName != "system:node:"+name || !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(certs[0].PublicKey) {
				t.Errorf("%s got the certificate of %s", name, certs[0].Subject.CommonName)
			}
			if err := certs[0].CheckSignatureFrom(srv.cfg.CACert); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	wg.Wait()
}

// TestClientRedialsAfterSignerRestart checks that calls fail (without
// ErrRejected, so they are retried) while the signer is down and succeed
// again once it is back, on new connections.
func TestClientRedialsAfterSignerRestart(t *testing.T) {
	srv, sock := newTestSigner(t)
	stop := serve(t, srv, sock)
	cl := NewClient(sock)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	csr, _ := approvedCSR(t, "n1")
	if _, err := cl.Sign(ctx, csr); err != nil {
		t.Fatal(err)
	}
	stop()
	for range 2 * clientConns {
		if _, err := cl.Sign(ctx, csr); err == nil || errors.Is(err, ErrRejected) {
			t.Fatalf("Sign with the signer down = %v, want a connection error", err)
		}
	}
	serve(t, srv, sock)
	for range 2 * clientConns {
		if _, err := cl.Sign(ctx, csr); err != nil {
			t.Fatalf("Sign after the restart = %v", err)
		}
	}
}

// TestSignTimesOut checks that a call to a signer that never answers
// ends with the context.
func TestSignTimesOut(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
		}
	}()
	cl := NewClient(sock)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	csr, _ := approvedCSR(t, "n1")
	if _, err := cl.Sign(ctx, csr); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sign = %v, want DeadlineExceeded", err)
	}
}

// TestBadPeers checks what the signer does with connections that do not
// follow the protocol.
func TestBadPeers(t *testing.T) {
	srv, sock := newTestSigner(t)
	serve(t, srv, sock)
	frame := func(payload []byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
	}
	tests := []struct {
		name     string
		send     []byte
		wantCode int // -1: the connection is closed without an answer
	}{
		{"HTTP instead of the preamble", []byte("POST /v1/sign HTTP/1.1\r\nHost: signer\r\n\r\n"), -1},
		{"frame over the limit", append([]byte(preamble), binary.BigEndian.AppendUint32(nil, maxFrame+1)...), -1},
		{"frame without an id", append([]byte(preamble), frame([]byte{1, 2, 3})...), -1},
		{"garbage request", append([]byte(preamble), frame(append(binary.BigEndian.AppendUint64(nil, 7), 0xff, 0xff, 0xff))...), int(codeRejected)},
		{"empty request", append([]byte(preamble), frame(binary.BigEndian.AppendUint64(nil, 7))...), int(codeRejected)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			f, err := readFrame(bufio.NewReader(c), nil)
			if tt.wantCode < 0 {
				if err == nil {
					t.Fatalf("got an answer %q, want the connection closed", f)
				}
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatal("connection left open")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(f) < 9 || binary.BigEndian.Uint64(f) != 7 || int(f[8]) != tt.wantCode {
				t.Fatalf("answer %q, want id 7 and code %d", f, tt.wantCode)
			}
		})
	}
}
