package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// FrontendUsers are the client certificate common names that may use the
// TLS frontend besides members of system:masters: the API server's
// client identities towards kubelets and Konnectivity's usual one.
var FrontendUsers = []string{"kube-apiserver", "kube-apiserver-kubelet-client", "system:kube-apiserver", "system:konnectivity-server"}

// ErrForbidden is wrapped by DefaultAuthorizeFrontend's refusals.
var ErrForbidden = errors.New("not allowed to use the tunnel frontend")

// DefaultAuthorizeFrontend admits members of system:masters and the
// FrontendUsers, and never a node: a node must not reach other nodes.
func DefaultAuthorizeFrontend(cert *x509.Certificate) error {
	if _, isNode := tunnelwire.NodeName(cert.Subject.CommonName, cert.Subject.Organization); isNode ||
		strings.HasPrefix(cert.Subject.CommonName, tunnelwire.NodeUserPrefix) || slices.Contains(cert.Subject.Organization, tunnelwire.NodesGroup) {
		return fmt.Errorf("%w: %q is a node", ErrForbidden, cert.Subject.CommonName)
	}
	if slices.Contains(cert.Subject.Organization, csrpolicy.MastersGroup) || slices.Contains(FrontendUsers, cert.Subject.CommonName) {
		return nil
	}
	return fmt.Errorf("%w: %q is neither in %s nor one of %s", ErrForbidden, cert.Subject.CommonName, csrpolicy.MastersGroup, strings.Join(FrontendUsers, ", "))
}

// ListenSocket listens on a UNIX socket for the CONNECT frontend, replacing
// a stale socket file, with mode 0600.
func ListenSocket(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("tunnel frontend socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("tunnel frontend socket: %w", err)
	}
	return ln, nil
}

// frontend is the HTTP/1.1 CONNECT server; TLS connections reach it
// through a channel listener once the handshake has told them from agents.
type frontend struct {
	srv *http.Server
	ln  *chanListener
}

func (s *Server) frontend(ctx context.Context) *frontend {
	f := &frontend{ln: &chanListener{c: make(chan net.Conn), done: make(chan struct{})}}
	f.srv = &http.Server{
		Handler:      http.HandlerFunc(s.serveConnect),
		BaseContext:  func(net.Listener) context.Context { return ctx },
		ErrorLog:     log.New(io.Discard, "", 0),
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}, // HTTP/1.1 only
	}
	return f
}

// add hands a TLS connection to the frontend server.
func (f *frontend) add(c net.Conn) {
	select {
	case f.ln.c <- c:
	case <-f.ln.done:
		c.Close()
	}
}

func (f *frontend) close() {
	f.ln.Close()
	f.srv.Close()
}

func serveFrontend(f *frontend, ln net.Listener) error {
	if err := f.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("tunnel frontend: %w", err)
	}
	return nil
}

// serveConnect answers CONNECT <node>:<port>: it opens a stream through
// the node's tunnel, then hijacks the connection and splices the two.
func (s *Server) serveConnect(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, reason, format string, a ...any) {
		s.m.dialFailures.WithLabelValues(reason).Inc()
		msg := fmt.Sprintf(format, a...)
		s.log.Warn("tunnel frontend: CONNECT refused", "target", r.Host, "status", status, "reason", reason, "err", msg)
		http.Error(w, "nodetrust tunnel: "+msg, status)
	}
	if r.TLS != nil {
		if len(r.TLS.PeerCertificates) == 0 {
			fail(http.StatusForbidden, "forbidden", "a client certificate is required")
			return
		}
		if err := s.cfg.AuthorizeFrontend(r.TLS.PeerCertificates[0]); err != nil {
			fail(http.StatusForbidden, "forbidden", "%v", err)
			return
		}
	}
	if r.Method != http.MethodConnect {
		fail(http.StatusMethodNotAllowed, "bad_request", "this proxy only carries CONNECT <node-name>:<port> (curl needs --proxytunnel)")
		return
	}
	node, err := s.NodeFor(r.Host)
	switch {
	case errors.Is(err, ErrBadTarget):
		fail(http.StatusBadRequest, "bad_request", "%v", err)
		return
	case err != nil:
		fail(http.StatusServiceUnavailable, "no_tunnel", "%v", err)
		return
	}
	if !s.enter() {
		fail(http.StatusServiceUnavailable, "shutting_down", "the tunnel server is shutting down")
		return
	}
	defer s.wg.Done()
	stream, err := s.DialNode(r.Context(), node, r.Host)
	var refused *RefusedError
	switch {
	case errors.As(err, &refused):
		status := http.StatusBadGateway
		if refused.StatusCode == http.StatusForbidden || refused.StatusCode == http.StatusBadRequest {
			status = refused.StatusCode
		}
		fail(status, "agent_refused", "%v", err)
		return
	case errors.Is(err, ErrNoTunnel):
		fail(http.StatusServiceUnavailable, "no_tunnel", "%v", err)
		return
	case err != nil:
		fail(http.StatusBadGateway, "agent_error", "%v", err)
		return
	}
	defer stream.Close()
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.log.Warn("tunnel frontend: hijack failed", "err", err)
		return
	}
	defer client.Close()
	if _, err := io.WriteString(client, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		return
	}
	s.splice(client, brw.Reader, stream.(*streamConn))
}

// splice copies both ways; it returns when the agent's side ends or
// either side fails. The client's end of input half-closes the stream.
func (s *Server) splice(client net.Conn, buffered *bufio.Reader, stream *streamConn) {
	var wg sync.WaitGroup
	wg.Go(func() {
		var src io.Reader = client
		if n := buffered.Buffered(); n > 0 {
			src = io.MultiReader(io.LimitReader(buffered, int64(n)), client)
		}
		if err := copyCounted(stream, src, s.m.bytes.WithLabelValues("to_agent")); err == nil {
			stream.CloseWrite()
		} else {
			stream.Close()
		}
	})
	copyCounted(client, stream, s.m.bytes.WithLabelValues("from_agent"))
	client.Close()
	stream.Close()
	wg.Wait()
}

// chanListener is a net.Listener fed by a channel.
type chanListener struct {
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return tunnelAddr("tls-frontend") }
