package metadata

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// route is where a parsed request goes.
type route uint8

const (
	routeRoot     route = iota // "/"
	routeCM                    // /computeMetadata/
	routeTree                  // /computeMetadata/v1/... (or v1beta1 when enabled)
	routeLegacy                // /0.1/, /computeMetadata/v1beta1/ when disabled
	routeNotFound              // anything else
)

// request is a request after the one canonical parse; the same parsed form is
// what is checked and what is served.
type request struct {
	addr     netip.Addr
	route    route
	path     string   // the escaped request path, for redirects
	query    string   // the raw query, kept on redirects
	segs     []string // below /computeMetadata/v1/
	dirSlash bool
	q        query
	head     bool

	// classified is set when the server's classifier decided the caller's
	// instance (inst, "" for the only one) and view.
	classified bool
	inst       string
	view       View
}

// ServeHTTP answers one metadata request. Long-poll timeouts and the
// cleanup of abandoned long-polls are driven by Run; a Server mounted as a
// handler elsewhere answers long-polls only when their value changes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	snap := s.snap.Load()
	resp, req, iv, v := s.prepare(snap, r)
	if resp == nil {
		resp = s.answer(snap, req, true)
		if req.q.waitForChange && resp.code == http.StatusOK && (!req.q.hasLastETag || req.q.lastETag == resp.etag) {
			s.wait(w, r, snap, req, resp)
			return
		}
	}
	_ = iv
	s.finish(w, v, req.head, resp)
}

func (s *Server) finish(w http.ResponseWriter, v View, head bool, resp *response) {
	s.metrics.request(v, resp.code)
	if resp.reason != "" {
		s.metrics.deny(resp.reason)
	}
	resp.writeTo(w, head)
}

// prepare runs every check that does not depend on the tree. A non-nil
// response ends the request there.
func (s *Server) prepare(snap *snapshot, r *http.Request) (*response, *request, *instanceViews, View) {
	req := &request{head: r.Method == http.MethodHead}
	if r.Method != http.MethodGet && !req.head {
		resp := errorResponse(http.StatusMethodNotAllowed, denyMethod, "method not allowed: the metadata server answers GET and HEAD only")
		resp.allow = "GET, HEAD"
		return resp, req, nil, ViewNone
	}
	h := r.Header
	if h["X-Forwarded-For"] != nil || h["Forwarded"] != nil || h["X-Real-Ip"] != nil {
		return errorResponse(http.StatusForbidden, denyForwarded, "forbidden: requests with X-Forwarded-For, Forwarded or X-Real-IP are refused"), req, nil, ViewNone
	}
	if !s.hostAllowed(r) {
		return errorResponse(http.StatusForbidden, denyHost, "forbidden: Host header is not a metadata server name"), req, nil, ViewNone
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return errorResponse(http.StatusForbidden, denyCaller, "forbidden: caller address unknown"), req, nil, ViewNone
	}
	req.addr = ap.Addr().Unmap()
	if snap.data == nil {
		return errorResponse(http.StatusServiceUnavailable, "", "service unavailable: metadata not available yet"), req, nil, ViewNone
	}
	if s.classify != nil {
		req.classified = true
		req.inst, req.view = s.classify(r)
	}
	iv, v := snap.callerOf(req)
	if v == ViewNone {
		return errorResponse(http.StatusForbidden, denyCaller, "forbidden: this address is not a host or pod address of any instance"), req, nil, ViewNone
	}
	if r.URL.Opaque != "" || r.URL.Host != "" && !strings.HasPrefix(r.RequestURI, "/") {
		return errorResponse(http.StatusBadRequest, denyRequest, "bad request: absolute or opaque request URIs are not accepted"), req, iv, v
	}
	segs, dirSlash, err := splitPath(r.URL.EscapedPath())
	if err != nil {
		return errorResponse(http.StatusBadRequest, denyRequest, "bad request: "+err.Error()), req, iv, v
	}
	req.dirSlash, req.path, req.query = dirSlash, r.URL.EscapedPath(), r.URL.RawQuery
	flavor := len(h["Metadata-Flavor"]) == 1 && h["Metadata-Flavor"][0] == "Google"
	switch {
	case len(segs) == 0:
		req.route = routeRoot
	case segs[0] == "computeMetadata" && len(segs) == 1:
		req.route = routeCM
	case segs[0] == "computeMetadata" && segs[1] == "v1":
		req.route, req.segs = routeTree, segs[2:]
	case segs[0] == "computeMetadata" && segs[1] == "v1beta1" && snap.legacy:
		req.route, req.segs = routeTree, segs[2:]
		flavor = true
	case segs[0] == "computeMetadata" && segs[1] == "v1beta1", segs[0] == "0.1":
		req.route = routeLegacy
	default:
		req.route = routeNotFound
	}
	if req.route != routeRoot && req.route != routeNotFound && !flavor {
		return errorResponse(http.StatusForbidden, denyFlavor, "forbidden: missing Metadata-Flavor:Google header."), req, iv, v
	}
	if req.route == routeLegacy {
		return errorResponse(http.StatusForbidden, denyLegacy, "forbidden: legacy metadata endpoints are disabled; use /computeMetadata/v1/"), req, iv, v
	}
	if req.q, err = parseQuery(r.URL.RawQuery); err != nil {
		return errorResponse(http.StatusBadRequest, denyRequest, "bad request: "+err.Error()), req, iv, v
	}
	if !dirSlash && (req.route == routeCM || req.route == routeTree && len(req.segs) == 0) {
		return redirect(req), req, iv, v
	}
	return nil, req, iv, v
}

// redirect answers a directory asked for without its slash, as GCE does:
// 301 to the path with the slash, which is also the body.
func redirect(req *request) *response {
	p := req.path + "/"
	loc := p
	if req.query != "" {
		loc += "?" + req.query
	}
	body := []byte(p + "\n")
	return &response{code: http.StatusMovedPermanently, body: body, ctype: contentText, location: loc, etag: etagOf(contentText, body)}
}

var (
	rootListing = []byte("computeMetadata/\n")
	cmListing   = []byte("v1/\n")
	cmLegacy    = []byte("v1/\nv1beta1/\n")
)

// answer resolves a prepared request against snap. The caller is mapped to
// its view again on every call, so a long-poll answered after a reload sees
// what the new data allows it. count says whether to count concealment hits
// (not when re-answering long-polls).
func (s *Server) answer(snap *snapshot, req *request, count bool) *response {
	iv, v := snap.callerOf(req)
	if v == ViewNone {
		return errorResponse(http.StatusForbidden, denyCaller, "forbidden: this address is not a host or pod address of any instance")
	}
	switch req.route {
	case routeRoot:
		return listingResponse(rootListing)
	case routeCM:
		if snap.legacy {
			return listingResponse(cmLegacy)
		}
		return listingResponse(cmListing)
	case routeNotFound:
		return notFound
	}
	root := iv.root(v)
	n := root.lookup(req.segs)
	if n == nil {
		if count && v == ViewPod && iv.host.lookup(req.segs) != nil {
			s.concealHit(req, iv, "path")
		}
		return notFound
	}
	q := &req.q
	var f format
	if n.dir {
		if !req.dirSlash {
			return redirect(req)
		}
		switch {
		case q.recursive && q.alt == "text":
			f = formatRecText
		case q.recursive:
			f = formatJSON
		case q.alt == "json":
			return errorResponse(http.StatusBadRequest, denyRequest, "bad request: alt=json on a directory needs recursive=true")
		default:
			f = formatText
		}
		if count && n.redacted && v == ViewPod {
			s.concealHit(req, iv, "redacted")
		}
	} else {
		if req.dirSlash {
			return notFound
		}
		if n.needsAudience && q.audience == "" {
			return errorResponse(http.StatusBadRequest, denyRequest, "bad request: non-empty audience parameter required")
		}
		if q.alt == "json" || q.recursive && q.alt != "text" {
			f = formatJSON
		}
	}
	rd := n.render(f)
	return &response{code: http.StatusOK, body: rd.body, ctype: rd.ctype, etag: rd.etag}
}

func listingResponse(b []byte) *response {
	return &response{code: http.StatusOK, body: b, ctype: contentText, etag: etagOf(contentText, b)}
}

func (s *Server) concealHit(req *request, iv *instanceViews, kind string) {
	s.metrics.concealed.WithLabelValues(kind).Inc()
	lvl := s.log.Warn
	msg := "pod requested a concealed metadata entry"
	if kind == "redacted" {
		lvl = s.log.Debug
		msg = "concealed entries left out of a pod's listing or dump"
	}
	lvl(msg, "caller", req.addr.String(), "instance", iv.name, "path", "/"+strings.Join(req.segs, "/"))
}

// hostAllowed refuses Host headers that are not a metadata server name, the
// address the connection arrived at, or a configured name: a page whose DNS
// name was rebound to this server cannot read it.
func (s *Server) hostAllowed(r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "" {
		return false
	}
	if s.allowedHosts[host] {
		return true
	}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if ap, err := netip.ParseAddrPort(la.String()); err == nil {
			if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap() == ap.Addr().Unmap() {
				return true
			}
		}
	}
	return false
}
