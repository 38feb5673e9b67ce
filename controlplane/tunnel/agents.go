package tunnel

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/nodetrust/nodetrust/internal/tunnelwire"
)

// agentConn is one agent's tunnel connection, on which the server is the
// HTTP/2 client.
type agentConn struct {
	node  string
	cc    *http2.ClientConn
	conn  *watchConn
	since time.Time
}

// watchConn closes done when the connection fails or is closed, which is
// how the server learns that an agent is gone (http2.ClientConn has no
// such signal).
type watchConn struct {
	net.Conn
	once sync.Once
	done chan struct{}
}

func (w *watchConn) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if err != nil {
		w.once.Do(func() { close(w.done) })
	}
	return n, err
}

func (w *watchConn) Close() error {
	w.once.Do(func() { close(w.done) })
	return w.Conn.Close()
}

// serveAgent identifies the agent from its verified client certificate,
// registers the connection as its node's newest and waits for it to end.
func (s *Server) serveAgent(ctx context.Context, conn *tls.Conn) {
	leaf := conn.ConnectionState().PeerCertificates[0]
	node, ok := tunnelwire.NodeName(leaf.Subject.CommonName, leaf.Subject.Organization)
	if !ok {
		s.m.refused.WithLabelValues("not_node").Inc()
		s.log.Warn("tunnel refused: client certificate is not a node's (want CN=system:node:<name>, O=system:nodes)",
			"remote", conn.RemoteAddr().String(), "subject", leaf.Subject.String())
		conn.Close()
		return
	}
	// The server speaks first: its hello line, then the HTTP/2 preface.
	conn.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout)) // socket deadlines are wall-clock
	if _, err := io.WriteString(conn, tunnelwire.Hello(s.cfg.ServerID, s.cfg.ServerCount)); err != nil {
		s.log.Warn("tunnel: hello failed", "node", node, "err", err)
		conn.Close()
		return
	}
	conn.SetWriteDeadline(time.Time{})
	hc := tunnelwire.NewBatchWriter(conn)
	wc := &watchConn{Conn: hc, done: make(chan struct{})}
	cc, err := s.h2.NewClientConn(wc)
	if err != nil {
		s.m.refused.WithLabelValues("http2").Inc()
		s.log.Warn("tunnel: HTTP/2 setup failed", "node", node, "err", err)
		wc.Close()
		return
	}
	a := &agentConn{node: node, cc: cc, conn: wc, since: s.clock.Now()}
	old := s.register(a)
	s.m.agents.Inc()
	s.log.Info("agent tunnel connected", "node", node, "remote", conn.RemoteAddr().String(), "replaces", len(old))
	for _, o := range old {
		if !s.enter() {
			break
		}
		go func() {
			defer s.wg.Done()
			s.drain(ctx, o)
		}()
	}
	<-wc.done
	s.unregister(a)
	cc.Close()
	s.m.agents.Dec()
	s.log.Info("agent tunnel closed", "node", node, "remote", conn.RemoteAddr().String())
}

// drain lets a replaced connection finish its open streams (it takes no
// new ones), up to DrainTimeout, then closes it.
func (s *Server) drain(ctx context.Context, a *agentConn) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DrainTimeout)
	defer cancel()
	a.cc.Shutdown(ctx)
	a.conn.Close()
}

// register makes a the newest connection of its node and returns the
// node's older connections, which the caller drains.
func (s *Server) register(a *agentConn) []*agentConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.agents[a.node]
	s.agents[a.node] = append([]*agentConn{a}, old...)
	return slices.Clone(old)
}

func (s *Server) unregister(a *agentConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := slices.DeleteFunc(s.agents[a.node], func(x *agentConn) bool { return x == a })
	if len(list) == 0 {
		delete(s.agents, a.node)
	} else {
		s.agents[a.node] = list
	}
}

// candidates returns the node's connections, newest first.
func (s *Server) candidates(node string) []*agentConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.agents[node])
}

// Nodes returns the names of the nodes with a tunnel, sorted.
func (s *Server) Nodes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.agents))
	for n := range s.agents {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Conns returns how many tunnel connections node has (a replaced one that
// is draining counts until it closes).
func (s *Server) Conns(node string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.agents[node])
}
