package metadata

import (
	"bytes"
	"net/http"
	"strconv"
	"time"
)

// response is everything the server says to one request, independent of how
// it is written (through net/http, or raw on a hijacked long-poll connection).
type response struct {
	code     int
	body     []byte
	ctype    string
	etag     string
	location string
	allow    string
	reason   string // denial reason for metrics, "" when served
}

// GCE's response headers, sent on every response, errors included: clients
// such as Node's gcp-metadata check Metadata-Flavor even on a 404.
var (
	hdrFlavor    = []string{"Google"}
	hdrServer    = []string{"Metadata Server for VM"}
	hdrXSS       = []string{"0"}
	hdrFrame     = []string{"SAMEORIGIN"}
	hdrText      = []string{contentText}
	hdrJSON      = []string{contentJSON}
	hdrHTML      = []string{"text/html; charset=UTF-8"}
	hdrPlain     = []string{"text/plain; charset=utf-8"}
	hdrNoSniff   = []string{"nosniff"}
	contentHTML  = hdrHTML[0]
	contentPlain = hdrPlain[0]
)

func ctypeHeader(ct string) []string {
	switch ct {
	case contentText:
		return hdrText
	case contentJSON:
		return hdrJSON
	case contentHTML:
		return hdrHTML
	}
	return hdrPlain
}

func errorResponse(code int, reason, msg string) *response {
	body := []byte(msg + "\n")
	return &response{code: code, body: body, ctype: contentPlain, reason: reason, etag: etagOf(contentPlain, body)}
}

var notFoundBody = []byte("<!DOCTYPE html>\n<html lang=en><meta charset=utf-8><title>Error 404 (Not Found)</title>\n" +
	"<p><b>404.</b> Not Found: there is no metadata entry at this path.\n")

var notFound = &response{code: http.StatusNotFound, body: notFoundBody, ctype: contentHTML, etag: etagOf(contentHTML, notFoundBody)}

// writeTo writes r through net/http.
func (r *response) writeTo(w http.ResponseWriter, head bool) {
	h := w.Header()
	setCommonHeaders(h)
	h["Content-Type"] = ctypeHeader(r.ctype)
	h["Etag"] = []string{r.etag}
	if r.location != "" {
		h["Location"] = []string{r.location}
	}
	if r.allow != "" {
		h["Allow"] = []string{r.allow}
	}
	h["Content-Length"] = []string{strconv.Itoa(len(r.body))}
	w.WriteHeader(r.code)
	if !head {
		w.Write(r.body)
	}
}

func setCommonHeaders(h http.Header) {
	h["Metadata-Flavor"] = hdrFlavor
	h["Server"] = hdrServer
	h["X-Xss-Protection"] = hdrXSS
	h["X-Frame-Options"] = hdrFrame
	h["X-Content-Type-Options"] = hdrNoSniff
}

// raw renders r as a complete HTTP/1.1 response that closes the connection,
// for long-polls answered on a hijacked connection.
func (r *response) raw(head bool, now time.Time) []byte {
	var b bytes.Buffer
	b.Grow(256 + len(r.body))
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(r.code))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(r.code))
	b.WriteString("\r\nContent-Type: ")
	b.WriteString(r.ctype)
	b.WriteString("\r\nEtag: ")
	b.WriteString(r.etag)
	b.WriteString("\r\nMetadata-Flavor: Google\r\nServer: Metadata Server for VM\r\nX-Xss-Protection: 0\r\nX-Frame-Options: SAMEORIGIN\r\nX-Content-Type-Options: nosniff\r\nDate: ")
	b.WriteString(now.UTC().Format(http.TimeFormat))
	b.WriteString("\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(r.body)))
	b.WriteString("\r\nConnection: close\r\n\r\n")
	if !head {
		b.Write(r.body)
	}
	return b.Bytes()
}
