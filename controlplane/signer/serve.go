package signer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
)

// shutdownWait is how long Serve lets requests in progress finish once
// ctx is done.
const shutdownWait = 5 * time.Second

// Serve answers sign calls on ln until ctx is done; it returns after every
// connection has ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{} // guarded by mu
		wg    sync.WaitGroup
	)
	stopped := make(chan struct{})
	go func() {
		<-ctx.Done()
		ln.Close()
		// Stop reading new requests; those being signed are answered.
		mu.Lock()
		for c := range conns {
			if cr, ok := c.(interface{ CloseRead() error }); ok {
				cr.CloseRead()
			} else {
				c.Close()
			}
		}
		mu.Unlock()
		close(stopped)
	}()
	var err error
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("signer serve: %w", aerr)
			}
			break
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Go(func() {
			s.serveConn(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if err != nil {
		// The listener failed on its own: end the connections too.
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	} else {
		<-stopped
	}
	select {
	case <-done:
	case <-time.After(shutdownWait):
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		<-done
	}
	return err
}

// serveConn reads requests from c and answers each as soon as it is
// signed, at most maxInFlight at once.
func (s *Server) serveConn(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	p := make([]byte, len(preamble))
	if _, err := io.ReadFull(r, p); err != nil || string(p) != preamble && string(p) != preamble2 && string(p) != preambleCA {
		s.cfg.Logger.Warn("signer connection does not speak the signer protocol; closing it", "err", err)
		return
	}
	if string(p) == preambleCA {
		s.serveCAOp(c, r)
		return
	}
	withPin := string(p) == preamble2
	var (
		wg      sync.WaitGroup
		sema    = make(chan struct{}, maxInFlight)
		answers = make(chan []byte, maxInFlight)
		written = make(chan struct{})
	)
	go func() {
		defer close(written)
		writeAnswers(c, answers)
	}()
	defer func() {
		wg.Wait()
		close(answers)
		<-written
	}()
	for {
		f, err := readFrame(r, nil)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.cfg.Logger.Warn("signer connection", "err", err)
			}
			return
		}
		if len(f) < 8 {
			s.cfg.Logger.Warn("signer connection sent a frame without a request id; closing it")
			return
		}
		sema <- struct{}{}
		wg.Go(func() {
			defer func() { <-sema }()
			id := binary.BigEndian.Uint64(f)
			var code byte
			var body []byte
			if pin, req, ok := splitPin(f[8:], withPin); ok {
				code, body = s.answer(pin, req)
			} else {
				code, body = codeRejected, []byte("request frame: pin longer than the frame")
			}
			out := make([]byte, 0, 4+9+len(body))
			out = appendFrameHeader(out, 9+len(body))
			out = binary.BigEndian.AppendUint64(out, id)
			answers <- append(append(out, code), body...)
		})
	}
}

// writeAnswers writes answers to c until the channel is closed; answers
// ready together share one write. After a write error it keeps draining
// the channel so that no signing goroutine blocks.
func writeAnswers(c net.Conn, answers <-chan []byte) {
	w := bufio.NewWriter(c)
	var err error
	for a := range answers {
		if err == nil {
			_, err = w.Write(a)
		}
	more:
		for err == nil {
			select {
			case a, ok := <-answers:
				if !ok {
					break more
				}
				_, err = w.Write(a)
			default:
				break more
			}
		}
		if err == nil {
			err = w.Flush()
		}
	}
}

// splitPin cuts the CA pin off a version 2 request.
func splitPin(b []byte, withPin bool) (pin string, req []byte, ok bool) {
	if !withPin {
		return "", b, true
	}
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return "", nil, false
	}
	return string(b[1 : 1+b[0]]), b[1+b[0]:], true
}

// answer decodes and signs one request.
func (s *Server) answer(pin string, b []byte) (byte, []byte) {
	var csr certv1.CertificateSigningRequest
	if err := csr.Unmarshal(b); err != nil {
		return codeRejected, []byte("decode sign request: " + err.Error())
	}
	pemCert, err := s.SignWith(pin, &csr)
	if err != nil {
		s.cfg.Logger.Warn("refused to sign", "csr", csr.Name, "err", err)
		if errors.Is(err, csrpolicy.ErrPolicy) {
			return codeRejected, []byte(err.Error())
		}
		return codeError, []byte(err.Error())
	}
	s.cfg.Logger.Debug("signed", "csr", csr.Name, "signer_name", csr.Spec.SignerName, "ca_pin", pin)
	return codeSigned, pemCert
}
