package metadata_test

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/test/attacks"
)

// FuzzPodViewConceals sends fuzzed request-targets (path and query, or an
// absolute URI) from a pod of node-1 and checks that no concealed value or
// key name comes back, in the body or the headers. Run it with
//
//	go test -run '^$' -fuzz '^FuzzPodViewConceals$' -fuzztime 10s ./metadata/
//
// Under plain go test the seeds (the attack suite) run as a normal test.
func FuzzPodViewConceals(f *testing.F) {
	for _, a := range attacks.List() {
		f.Add(a.Target)
	}
	for _, s := range []string{
		"/", "/computeMetadata/", v1, attrs + "cluster-location",
		attrs + "?wait_for_change=true", // waits: the request's context ends it
		v1 + "instance?recursive=true&audience=x",
		v1 + "instance/service-accounts/default/identity?audience=%6bube-env",
		"/computeMetadata/v1beta1/?recursive=true",
		v1 + "instance/attributes/kube-env?wait_for_change=true&timeout_sec=1",
	} {
		f.Add(s)
	}
	srv, err := metadata.NewServer(metadata.Config{MaxWatchersPerCaller: 1 << 20, MaxWatchers: 1 << 20}, loadSample(f))
	require.NoError(f, err)

	f.Fuzz(func(t *testing.T, target string) {
		// Build the request as net/http's server does from the wire, so
		// that absolute and odd forms parse as they would there.
		head := "GET " + target + " HTTP/1.1\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\n\r\n"
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			t.Skip("not a request net/http would serve")
		}
		req.RemoteAddr = podAddr + ":40000"
		// A long-poll waits in the handler (a ResponseRecorder cannot be
		// hijacked) until this context ends.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		req = req.WithContext(ctx)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)

		got := w.Body.String() + "\n" + headerText(w.Result().Header)
		// An error may quote the request back (an unknown parameter, a
		// redirect's Location); what the caller sent is not a leak.
		sent := strings.ToLower(target + "\n" + lenientUnescape(target) + "\n" + lenientUnescape(strings.ReplaceAll(target, "+", " ")))
		for _, l := range leaks(got) {
			if !strings.Contains(sent, strings.ToLower(l)) {
				t.Errorf("GET %q from a pod: response (%d) reveals %q:\n%s", target, w.Code, l, got)
			}
		}
	})
}

// lenientUnescape decodes every valid %XX in s and leaves the rest.
func lenientUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
