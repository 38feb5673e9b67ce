package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nodetrust/nodetrust/controlplane/csrs"
	"github.com/nodetrust/nodetrust/controlplane/store"
)

// filter is what a list or watch selects.
type filter struct {
	u      *user
	name   string // from fieldSelector metadata.name
	labels labels.Selector
}

func parseFilter(u *user, r *http.Request, pathName string) (*filter, error) {
	q := r.URL.Query()
	f := &filter{u: u, name: pathName, labels: labels.Everything()}
	if fs := q.Get("fieldSelector"); fs != "" {
		for _, term := range strings.Split(fs, ",") {
			k, v, ok := strings.Cut(term, "=")
			v = strings.TrimPrefix(v, "=")
			if !ok || strings.HasSuffix(k, "!") || strings.TrimSpace(k) != "metadata.name" {
				return nil, apierrors.NewBadRequest(fmt.Sprintf("field selector %q is not supported; only metadata.name=<name> is", term))
			}
			if f.name != "" && f.name != v {
				f.name = "\x00none"
			} else {
				f.name = v
			}
		}
	}
	if ls := q.Get("labelSelector"); ls != "" {
		sel, err := labels.Parse(ls)
		if err != nil {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("label selector %q: %v", ls, err))
		}
		f.labels = sel
	}
	return f, nil
}

// match decodes o when needed and reports whether the filter selects it.
func (f *filter) match(o store.Object) (*certv1.CertificateSigningRequest, bool) {
	if f.name != "" && o.Name != f.name {
		return nil, false
	}
	c, err := csrs.View(o)
	if err != nil {
		return nil, false
	}
	if !mayRead(f.u, c) || !f.labels.Matches(labels.Set(c.Labels)) {
		return nil, false
	}
	return c, true
}

func (s *Server) listOrWatch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if v := q.Get("watch"); v == "true" || v == "1" {
		s.watch(w, r, "")
		return
	}
	u := userFrom(r.Context())
	if !s.canReadAny(u) {
		writeStatus(w, apierrors.NewForbidden(csrResource, "", fmt.Errorf("user %q may not list certificate signing requests", u.Name)))
		return
	}
	f, err := parseFilter(u, r, "")
	if err != nil {
		writeStatus(w, err)
		return
	}
	objs, rv := s.cfg.Store.List(csrs.Kind)
	var buf []byte
	buf = fmt.Appendf(buf, `{"kind":"CertificateSigningRequestList","apiVersion":"certificates.k8s.io/v1","metadata":{"resourceVersion":"%d"},"items":[`, rv)
	n := 0
	for _, o := range objs {
		if _, ok := f.match(o); !ok {
			continue
		}
		if n > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, o.Data...)
		n++
	}
	buf = append(buf, "]}"...)
	writeRaw(w, http.StatusOK, buf)
}

func (s *Server) watchLegacy(w http.ResponseWriter, r *http.Request) {
	s.watch(w, r, r.PathValue("name"))
}

// eventWriter writes watch events as JSON lines or, when the client
// prefers it, as a protobuf watch stream.
type eventWriter struct {
	w        http.ResponseWriter
	protobuf bool
	buf      []byte
}

// object writes an event about c; data, when not nil, is c's stored JSON.
func (e *eventWriter) object(typ string, c *certv1.CertificateSigningRequest, data []byte) error {
	var err error
	if e.protobuf {
		var pb []byte
		if pb, err = marshalProtobufCSR(c); err == nil {
			e.buf, err = appendProtobufWatchEvent(e.buf[:0], typ, pb)
		}
	} else {
		if data == nil {
			if data, err = json.Marshal(c); err != nil {
				return err
			}
		}
		e.buf, err = appendJSONWatchEvent(e.buf[:0], typ, data)
	}
	if err != nil {
		return err
	}
	_, err = e.w.Write(e.buf)
	return err
}

// status writes an ERROR event holding st.
func (e *eventWriter) status(st *metav1.Status) error {
	var err error
	if e.protobuf {
		var pb []byte
		if pb, err = protobufStatus(st); err == nil {
			e.buf, err = appendProtobufWatchEvent(e.buf[:0], "ERROR", pb)
		}
	} else {
		var b []byte
		if b, err = json.Marshal(st); err == nil {
			e.buf, err = appendJSONWatchEvent(e.buf[:0], "ERROR", b)
		}
	}
	if err != nil {
		return err
	}
	_, err = e.w.Write(e.buf)
	return err
}

// appendJSONWatchEvent appends {"type":typ,"object":obj} and a newline;
// obj is JSON this server encoded (stored objects are), so it is copied
// as it is rather than compacted and validated again.
func appendJSONWatchEvent(b []byte, typ string, obj []byte) ([]byte, error) {
	t, err := json.Marshal(typ)
	if err != nil {
		return nil, err
	}
	b = append(b, `{"type":`...)
	b = append(b, t...)
	b = append(b, `,"object":`...)
	b = append(b, bytes.TrimSpace(obj)...)
	return append(b, "}\n"...), nil
}

// watch streams events as kube-apiserver does: one JSON object per line.
// sendInitialEvents=true (the streaming list client-go's reflector asks
// for) sends the current objects and then a bookmark marked
// "k8s.io/initial-events-end"; an unset or "0" resourceVersion sends the
// current objects as ADDED; any other starts after that version, or
// answers 410 Gone in an ERROR event when it is too old.
func (s *Server) watch(w http.ResponseWriter, r *http.Request, pathName string) {
	u := userFrom(r.Context())
	if !s.canReadAny(u) {
		writeStatus(w, apierrors.NewForbidden(csrResource, "", fmt.Errorf("user %q may not watch certificate signing requests", u.Name)))
		return
	}
	f, err := parseFilter(u, r, pathName)
	if err != nil {
		writeStatus(w, err)
		return
	}
	q := r.URL.Query()
	initial := q.Get("sendInitialEvents") == "true"
	rvParam := q.Get("resourceVersion")
	var from uint64
	var snapshot []store.Object
	switch {
	case initial || rvParam == "" || rvParam == "0":
		snapshot, from = s.cfg.Store.List(csrs.Kind)
	default:
		from, err = strconv.ParseUint(rvParam, 10, 64)
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("resourceVersion %q is not a number", rvParam)))
			return
		}
	}
	name := f.name
	if name == "\x00none" {
		name = "\x00"
	}
	sw, err := s.cfg.Store.Watch(csrs.Kind, name, from)
	timeout := 30 * time.Minute
	if ts, e := strconv.Atoi(q.Get("timeoutSeconds")); e == nil && ts > 0 {
		timeout = time.Duration(ts) * time.Second
	}
	ew := &eventWriter{w: w, protobuf: wantsProtobuf(r)}
	if ew.protobuf {
		w.Header().Set("Content-Type", protobufWatchType)
	} else {
		w.Header().Set("Content-Type", "application/json")
	}
	w.Header().Set("Cache-Control", "no-cache, private")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if err != nil {
		st := apierrors.NewResourceExpired(fmt.Sprintf("too old resource version: %d", from)).Status()
		st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
		ew.status(&st)
		rc.Flush()
		return
	}
	defer sw.Stop()
	for _, o := range snapshot {
		if c, ok := f.match(o); ok {
			ew.object(string(store.Added), c, o.Data)
		}
	}
	if initial {
		bm := &certv1.CertificateSigningRequest{
			TypeMeta: metav1.TypeMeta{Kind: csrs.KindName, APIVersion: csrs.APIVersion},
			ObjectMeta: metav1.ObjectMeta{
				ResourceVersion: strconv.FormatUint(from, 10),
				Annotations:     map[string]string{metav1.InitialEventsAnnotationKey: "true"},
			},
		}
		ew.object("BOOKMARK", bm, nil)
	}
	rc.Flush()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	timer := s.clk.NewTimer(timeout)
	defer timer.Stop()
	go func() {
		select {
		case <-timer.C():
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		ev, err := sw.Next(ctx)
		if err != nil {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				s.log.Info("watch ended", "user", u.Name, "err", err)
			}
			return
		}
		c, ok := f.match(ev.Object)
		if !ok {
			continue
		}
		data := ev.Data
		if ev.Type == store.Deleted {
			c = c.DeepCopy()
			c.ResourceVersion = strconv.FormatUint(ev.RV, 10)
			data = nil
		}
		if err := ew.object(string(ev.Type), c, data); err != nil {
			return
		}
		// Flush only when nothing else is queued, so bursts share a write.
		rc.Flush()
	}
}
