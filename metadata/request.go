package metadata

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Errors of the request parser; each is answered with 400.
var (
	errBadPath  = errors.New("path is not canonical")
	errBadQuery = errors.New("bad query")
)

// splitPath splits an escaped request path into its unescaped segments. It
// is the one canonical parse of a path: doubled slashes, dot segments,
// encoded slashes and NUL bytes are refused rather than interpreted, so no
// second spelling of an entry exists.
func splitPath(escaped string) (segs []string, dirSlash bool, err error) {
	if !strings.HasPrefix(escaped, "/") {
		return nil, false, errBadPath
	}
	p := escaped[1:]
	if p == "" {
		return nil, true, nil
	}
	if strings.HasSuffix(p, "/") {
		dirSlash = true
		p = p[:len(p)-1]
	}
	segs = strings.Split(p, "/")
	for i, s := range segs {
		if s == "" {
			return nil, false, errBadPath
		}
		if strings.IndexByte(s, '%') >= 0 {
			u, err := url.PathUnescape(s)
			if err != nil {
				return nil, false, errBadPath
			}
			s = u
			segs[i] = s
		}
		if s == "." || s == ".." || strings.ContainsAny(s, "/\x00") {
			return nil, false, errBadPath
		}
	}
	return segs, dirSlash, nil
}

// query holds the recognised query parameters of a request.
type query struct {
	recursive     bool
	waitForChange bool
	alt           string // "", "json" or "text"
	timeout       time.Duration
	lastETag      string
	hasLastETag   bool
	audience      string
}

// MaxTimeout bounds timeout_sec of a long-poll.
const MaxTimeout = time.Hour

// knownParams are the query keys GCE clients send. Anything else is refused,
// so a parameter the server ignores cannot change what a filter saw.
var knownParams = map[string]bool{
	"recursive": true, "alt": true, "wait_for_change": true, "timeout_sec": true, "last_etag": true,
	"audience": true, "format": true, "licenses": true, "scopes": true, "service_account": true, "scope": true,
}

// parseQuery parses a raw query strictly: '&'-separated pairs only (';'
// refused), each key known and given once, values well formed.
func parseQuery(raw string) (query, error) {
	var q query
	if raw == "" {
		return q, nil
	}
	if strings.IndexByte(raw, ';') >= 0 {
		return q, fmt.Errorf("%w: ';' is not a parameter separator", errBadQuery)
	}
	seen := map[string]bool{}
	for _, pair := range strings.Split(raw, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		k, err1 := url.QueryUnescape(k)
		v, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			return q, fmt.Errorf("%w: bad escaping", errBadQuery)
		}
		if !knownParams[k] {
			return q, fmt.Errorf("%w: unrecognized parameter %q", errBadQuery, k)
		}
		if seen[k] {
			return q, fmt.Errorf("%w: parameter %q given twice", errBadQuery, k)
		}
		seen[k] = true
		switch k {
		case "recursive":
			b, ok := parseBool(v)
			if !ok {
				return q, fmt.Errorf("%w: recursive must be true or false", errBadQuery)
			}
			q.recursive = b
		case "wait_for_change":
			b, ok := parseBool(v)
			if !ok {
				return q, fmt.Errorf("%w: wait_for_change must be true or false", errBadQuery)
			}
			q.waitForChange = b
		case "alt":
			switch v {
			case "json", "text":
				q.alt = v
			default:
				return q, fmt.Errorf("%w: alt must be json or text", errBadQuery)
			}
		case "timeout_sec":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return q, fmt.Errorf("%w: timeout_sec must be a positive whole number of seconds", errBadQuery)
			}
			q.timeout = min(time.Duration(n)*time.Second, MaxTimeout)
		case "last_etag":
			if len(v) > 128 {
				return q, fmt.Errorf("%w: last_etag is too long", errBadQuery)
			}
			q.lastETag, q.hasLastETag = v, true
		case "audience":
			q.audience = v
		}
	}
	return q, nil
}

func parseBool(v string) (bool, bool) {
	switch strings.ToLower(v) {
	case "true", "1", "":
		return true, true
	case "false", "0":
		return false, true
	}
	return false, false
}
