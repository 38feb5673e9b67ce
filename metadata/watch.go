package metadata

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// A long-poll (wait_for_change) that has to wait is parked in the hub. On an
// HTTP/1 connection the connection is hijacked and the handler goroutine and
// its buffers are released, so a waiter costs a socket and a small struct:
// ten thousand of them fit in a few tens of megabytes. Other transports wait
// in the handler.

// watcher is one parked long-poll.
type watcher struct {
	group     *watchGroup
	waitingOn string // the ETag the caller already has
	deadline  time.Time
	head      bool
	conn      net.Conn       // hijacked connection, or nil
	done      chan *response // for waits inside the handler
}

// watchGroup gathers the watchers of one caller on one request form, so a
// change is resolved once per group, not once per watcher.
type watchGroup struct {
	key      watchKey
	req      *request
	watchers map[*watcher]struct{}
}

type watchKey struct {
	addr     netip.Addr
	path     string
	dirSlash bool
	f        string // recursive/alt/audience, the parts of the query that shape the answer
	inst     string // the classifier's answer, when the server has one
	view     View
}

// hub holds parked long-polls.
type hub struct {
	mu        sync.Mutex
	groups    map[watchKey]*watchGroup
	perCaller map[netip.Addr]int
	total     int
}

func newHub() *hub {
	return &hub{groups: map[watchKey]*watchGroup{}, perCaller: map[netip.Addr]int{}}
}

func keyOf(req *request) watchKey {
	q := req.q
	var f strings.Builder
	if q.recursive {
		f.WriteString("r")
	}
	f.WriteString(q.alt)
	f.WriteByte('|')
	f.WriteString(q.audience)
	return watchKey{addr: req.addr, path: req.path, dirSlash: req.dirSlash, f: f.String(), inst: req.inst, view: req.view} // the request path: "/" and "/computeMetadata/v1/" have the same segs
}

// admit reserves a place for one more waiter of addr.
func (s *Server) admit(addr netip.Addr) bool {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.total >= s.maxWatchers || h.perCaller[addr] >= s.maxPerCaller {
		return false
	}
	h.total++
	h.perCaller[addr]++
	s.metrics.watchers.Inc()
	return true
}

// releaseLocked gives back a waiter's place; h.mu is held.
func (s *Server) releaseLocked(addr netip.Addr) {
	h := s.hub
	h.total--
	if h.perCaller[addr]--; h.perCaller[addr] <= 0 {
		delete(h.perCaller, addr)
	}
	s.metrics.watchers.Dec()
}

// park adds w to the hub if snap is still the current snapshot; otherwise the
// caller must answer again against the new one.
func (s *Server) park(w *watcher, req *request, snap *snapshot) bool {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.snap.Load() != snap {
		return false
	}
	k := keyOf(req)
	g := h.groups[k]
	if g == nil {
		g = &watchGroup{key: k, req: req, watchers: map[*watcher]struct{}{}}
		h.groups[k] = g
	}
	w.group = g
	g.watchers[w] = struct{}{}
	return true
}

// unparkLocked removes w; it reports false if w was already gone.
func (s *Server) unparkLocked(w *watcher) bool {
	g := w.group
	if g == nil {
		return false
	}
	if _, ok := g.watchers[w]; !ok {
		return false
	}
	delete(g.watchers, w)
	if len(g.watchers) == 0 {
		delete(s.hub.groups, g.key)
	}
	s.releaseLocked(g.key.addr)
	return true
}

// wait parks a long-poll whose value has not changed yet.
func (s *Server) wait(w http.ResponseWriter, r *http.Request, snap *snapshot, req *request, resp *response) {
	_, v := snap.callerOf(req)
	if !s.admit(req.addr) {
		s.finish(w, v, req.head, errorResponse(http.StatusTooManyRequests, denyWatchers, "too many waiting wait_for_change requests from this address"))
		return
	}
	timeout := req.q.timeout
	if timeout == 0 {
		timeout = MaxTimeout
	}
	wt := &watcher{waitingOn: resp.etag, head: req.head, deadline: s.clock.Now().Add(timeout)}
	if hj, ok := w.(http.Hijacker); ok && r.ProtoMajor == 1 {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.SetDeadline(time.Time{})
			wt.conn = conn
		}
	}
	if wt.conn == nil {
		wt.done = make(chan *response, 1)
	}
	for !s.park(wt, req, snap) {
		// The data changed between answering and parking: answer again.
		snap = s.snap.Load()
		resp = s.answer(snap, req, false)
		if resp.code != http.StatusOK || resp.etag != wt.waitingOn {
			s.hub.mu.Lock()
			s.releaseLocked(req.addr)
			s.hub.mu.Unlock()
			s.deliverAll([]delivery{{wt, v, resp}})
			if wt.conn == nil {
				s.finish(w, v, req.head, <-wt.done)
			}
			return
		}
	}
	if wt.conn != nil {
		return // the hub answers on the hijacked connection
	}
	select {
	case resp := <-wt.done:
		s.finish(w, v, req.head, resp)
	case <-r.Context().Done():
		s.hub.mu.Lock()
		gone := s.unparkLocked(wt)
		s.hub.mu.Unlock()
		if !gone {
			<-wt.done // answered concurrently; nothing to write to a closed request
		}
	}
}

// deliver answers a watcher that has left the hub. A hijacked connection
// gets raw bytes (rendered once per answer by the caller) and is closed.
func (s *Server) deliver(w *watcher, v View, resp *response, raw []byte) {
	if w.conn == nil {
		w.done <- resp
		return
	}
	s.metrics.request(v, resp.code)
	w.conn.SetWriteDeadline(time.Now().Add(5 * time.Second)) // socket deadlines are wall-clock, whatever s.clock is
	w.conn.Write(raw)
}

type delivery struct {
	w    *watcher
	v    View
	resp *response
}

// notify answers every waiter whose view changed in snap. It runs after snap
// became current.
func (s *Server) notify(snap *snapshot) {
	var out []delivery
	s.hub.mu.Lock()
	for _, g := range s.hub.groups {
		resp := s.answer(snap, g.req, false)
		_, v := snap.callerOf(g.req)
		for w := range g.watchers {
			if resp.code == http.StatusOK && resp.etag == w.waitingOn {
				continue
			}
			s.unparkLocked(w)
			out = append(out, delivery{w, v, resp})
		}
	}
	s.hub.mu.Unlock()
	s.metrics.wakeups.Add(float64(len(out)))
	s.deliverAll(out)
}

// deliverAll writes answers with a few goroutines, every answer first and
// the closes after, so ten thousand waiters have theirs well within a
// second. Each distinct answer is rendered to bytes once.
func (s *Server) deliverAll(out []delivery) {
	if len(out) == 0 {
		return
	}
	now := s.clock.Now()
	type rawKey struct {
		resp *response
		head bool
	}
	raws := map[rawKey][]byte{}
	for _, d := range out {
		if d.w.conn != nil {
			k := rawKey{d.resp, d.w.head}
			if raws[k] == nil {
				raws[k] = d.resp.raw(d.w.head, now)
			}
		}
	}
	const workers = 4
	n := min(workers, len(out))
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for j := i; j < len(out); j += n {
				d := out[j]
				s.deliver(d.w, d.v, d.resp, raws[rawKey{d.resp, d.w.head}])
			}
		})
	}
	wg.Wait()
	for i := range n {
		wg.Go(func() {
			for j := i; j < len(out); j += n {
				if c := out[j].w.conn; c != nil {
					c.Close()
				}
			}
		})
	}
	wg.Wait()
}

// sweep answers waiters whose timeout passed and, when checkConns is set,
// drops hijacked waiters whose client has gone away (Go clients abandon
// long-polls after their own timeout; they must not pile up). The peeks at
// connections happen outside the hub's lock.
func (s *Server) sweep(now time.Time, checkConns bool) {
	snap := s.snap.Load()
	var out []delivery
	var parked []*watcher
	s.hub.mu.Lock()
	for _, g := range s.hub.groups {
		var resp *response
		var v View
		for w := range g.watchers {
			if !now.Before(w.deadline) {
				if resp == nil {
					resp = s.answer(snap, g.req, false)
					_, v = snap.callerOf(g.req)
				}
				s.unparkLocked(w)
				out = append(out, delivery{w, v, resp})
				continue
			}
			if checkConns && w.conn != nil {
				parked = append(parked, w)
			}
		}
	}
	s.hub.mu.Unlock()
	s.deliverAll(out)

	var dead []*watcher
	for _, w := range parked {
		if peerClosed(w.conn) {
			dead = append(dead, w)
		}
	}
	if len(dead) == 0 {
		return
	}
	s.hub.mu.Lock()
	for i, w := range dead {
		if !s.unparkLocked(w) {
			dead[i] = nil // answered meanwhile; its deliverer closes it
		}
	}
	s.hub.mu.Unlock()
	for _, w := range dead {
		if w != nil {
			w.conn.Close()
		}
	}
}

// closeAll answers every waiter with the current value, at shutdown.
func (s *Server) closeAll() {
	s.sweep(time.Unix(1<<62, 0), false)
}
