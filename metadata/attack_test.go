package metadata_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/metadata"
)

// attack is one request a pod of node-1 might try to read concealed data
// with. Targets go on the wire byte for byte.
type attack struct {
	name   string
	method string   // GET when empty
	target string   // the request-target as sent
	extra  []string // extra header lines
	want   int      // expected status; 0 accepts any
}

// attacks is the regression suite of §2.2, §6 and §8 of the reference:
// every spelling of the concealed entries, every ancestor dump, every
// version and every transport trick. It is also the fuzz seed corpus.
var attacks = []attack{
	// The entries themselves.
	{name: "direct kube-env", target: kubeEnv, want: 404},
	{name: "direct bootstrap token", target: attrs + "nodetrust-bootstrap-token", want: 404},
	{name: "direct as json", target: kubeEnv + "?alt=json", want: 404},
	{name: "direct as recursive text", target: kubeEnv + "?alt=text&recursive=true", want: 404},
	{name: "project attribute of the same name", target: v1 + "project/attributes/kube-env", want: 404},
	{name: "trailing slash", target: kubeEnv + "/", want: 404},
	{name: "trailing slash on bootstrap token", target: attrs + "nodetrust-bootstrap-token/", want: 404},
	// Path spelling.
	{name: "doubled slash before key", target: v1 + "instance/attributes//kube-env", want: 400},
	{name: "doubled slash after computeMetadata", target: "/computeMetadata//v1/instance/attributes/kube-env", want: 400},
	{name: "leading doubled slash", target: "//computeMetadata/v1/instance/attributes/kube-env", want: 400},
	{name: "percent-encoded letters", target: attrs + "%6b%75%62%65-env", want: 404},
	{name: "percent-encoded upper hex and dash", target: attrs + "%6B%75%62%65%2Denv", want: 404},
	{name: "percent-encoded bootstrap token", target: attrs + "nodetrust%2dbootstrap%2dtoken", want: 404},
	{name: "encoded slash", target: v1 + "instance/attributes%2Fkube-env", want: 400},
	{name: "encoded slashes lower case", target: v1 + "instance%2fattributes%2fkube-env", want: 400},
	{name: "dot-dot segment", target: v1 + "instance/../instance/attributes/kube-env", want: 400},
	{name: "dot segment", target: v1 + "instance/./attributes/kube-env", want: 400},
	{name: "leading dot segment", target: "/./computeMetadata/v1/instance/attributes/kube-env", want: 400},
	{name: "encoded dot-dot", target: attrs + "%2e%2e/attributes/kube-env", want: 400},
	{name: "NUL byte", target: kubeEnv + "%00", want: 400},
	{name: "semicolon in path", target: kubeEnv + ";x", want: 404},
	{name: "semicolon segment", target: attrs + ";/kube-env", want: 404},
	{name: "semicolon in query on the entry", target: kubeEnv + "?alt=text;recursive=true", want: 400},
	{name: "semicolon in query on the directory", target: attrs + "?alt=text;recursive=true", want: 400},
	{name: "upper-case key", target: attrs + "KUBE-ENV", want: 404},
	{name: "mixed-case key", target: attrs + "Kube-Env", want: 404},
	{name: "upper-case prefix", target: "/COMPUTEMETADATA/V1/instance/attributes/kube-env", want: 404},
	{name: "upper-case prefix recursive", target: "/COMPUTEMETADATA/V1/?recursive=true", want: 404},
	// Every ancestor, recursively, in both formats.
	{name: "attributes listing", target: attrs, want: 200},
	{name: "attributes recursive", target: attrs + "?recursive=true", want: 200},
	{name: "attributes recursive json", target: attrs + "?recursive=true&alt=json", want: 200},
	{name: "attributes recursive text", target: attrs + "?recursive=true&alt=text", want: 200},
	{name: "instance recursive", target: v1 + "instance/?recursive=true", want: 200},
	{name: "instance recursive json", target: v1 + "instance/?recursive=true&alt=json", want: 200},
	{name: "instance recursive text", target: v1 + "instance/?recursive=true&alt=text", want: 200},
	{name: "v1 recursive", target: v1 + "?recursive=true", want: 200},
	{name: "v1 recursive json", target: v1 + "?recursive=true&alt=json", want: 200},
	{name: "v1 recursive text", target: v1 + "?recursive=true&alt=text", want: 200},
	{name: "project recursive", target: v1 + "project/?recursive=true", want: 200},
	{name: "project recursive text", target: v1 + "project/?recursive=true&alt=text", want: 200},
	{name: "root recursive", target: "/?recursive=true", want: 200},
	// recursive spelled otherwise.
	{name: "bare recursive", target: attrs + "?recursive", want: 200},
	{name: "bare recursive on instance", target: v1 + "instance/?recursive", want: 200},
	{name: "encoded equals", target: attrs + "?recursive%3Dtrue", want: 400},
	{name: "control byte in key", target: attrs + "?re%08ecursive=true", want: 400},
	{name: "upper-case value", target: attrs + "?recursive=TRUE", want: 200},
	{name: "numeric value", target: v1 + "instance/?recursive=1", want: 200},
	{name: "hex-encoded key", target: attrs + "?%72%65%63%75%72%73%69%76%65=true", want: 200},
	{name: "upper-case key param", target: attrs + "?Recursive=true", want: 400},
	{name: "nonrecursive key", target: attrs + "?nonrecursive=true", want: 400},
	{name: "duplicate recursive", target: attrs + "?recursive=false&recursive=true", want: 400},
	// Long-polls.
	{name: "wait on attributes", target: attrs + "?wait_for_change=true&last_etag=NONE", want: 200},
	{name: "wait on attributes recursive", target: attrs + "?recursive=true&wait_for_change=true&last_etag=NONE", want: 200},
	{name: "wait on instance recursive", target: v1 + "instance/?recursive=true&wait_for_change=true&last_etag=NONE", want: 200},
	{name: "guest agent long-poll", target: v1 + "?recursive=true&alt=json&wait_for_change=true&last_etag=NONE&timeout_sec=60", want: 200},
	{name: "wait on the entry", target: kubeEnv + "?wait_for_change=true&last_etag=NONE", want: 404},
	// Legacy versions.
	{name: "v1beta1 entry", target: "/computeMetadata/v1beta1/instance/attributes/kube-env", want: 403},
	{name: "v1beta1 recursive", target: "/computeMetadata/v1beta1/instance/attributes/?recursive=true", want: 403},
	{name: "v1beta1 without header", target: "/computeMetadata/v1beta1/instance/?recursive=true", extra: []string{"Metadata-Flavor:"}, want: 403},
	{name: "0.1 entry", target: "/0.1/meta-data/attributes/kube-env", want: 403},
	{name: "0.1 recursive", target: "/0.1/meta-data/attributes/?recursive=true", want: 403},
	{name: "unknown version", target: "/computeMetadata/v2/instance/attributes/kube-env", want: 404},
	// Credentials, concealed from pods by default.
	{name: "default token", target: v1 + "instance/service-accounts/default/token", want: 404},
	{name: "token by email", target: v1 + "instance/service-accounts/node-1@demo-project.iam.gserviceaccount.com/token", want: 404},
	{name: "token with scopes", target: v1 + "instance/service-accounts/default/token?scopes=x", want: 404},
	{name: "identity", target: v1 + "instance/service-accounts/default/identity?audience=x", want: 404},
	{name: "identity full", target: v1 + "instance/service-accounts/default/identity?audience=x&format=full&licenses=TRUE", want: 404},
	{name: "service accounts recursive", target: v1 + "instance/service-accounts/?recursive=true", want: 200},
	{name: "default account recursive", target: v1 + "instance/service-accounts/default/?recursive=true", want: 200},
	{name: "default account listing", target: v1 + "instance/service-accounts/default/", want: 200},
	// Transport tricks.
	{name: "absolute-form URI", target: "http://metadata.google.internal/computeMetadata/v1/instance/attributes/kube-env", want: 400},
	{name: "absolute-form URI recursive", target: "http://metadata.google.internal/computeMetadata/v1/?recursive=true", want: 400},
	{name: "absolute-form URI with IP", target: "http://169.254.169.254/computeMetadata/v1/instance/attributes/kube-env", want: 400},
	{name: "HEAD entry", method: http.MethodHead, target: kubeEnv, want: 404},
	{name: "HEAD recursive", method: http.MethodHead, target: v1 + "?recursive=true", want: 200},
	{name: "X-Forwarded-For on entry", target: kubeEnv, extra: []string{"X-Forwarded-For: 10.0.0.1"}, want: 403},
	{name: "X-Forwarded-For on recursive", target: v1 + "?recursive=true", extra: []string{"X-Forwarded-For: 10.0.0.1"}, want: 403},
	{name: "empty X-Forwarded-For", target: v1 + "instance/?recursive=true", extra: []string{"X-Forwarded-For:"}, want: 403},
	{name: "X-Forwarded-For claiming the host", target: kubeEnv, extra: []string{"X-Forwarded-For: 127.0.0.1"}, want: 403},
	{name: "X-Real-IP claiming the host", target: kubeEnv, extra: []string{"X-Real-IP: 127.0.0.1"}, want: 403},
	{name: "Forwarded claiming the host", target: kubeEnv, extra: []string{"Forwarded: for=127.0.0.1"}, want: 403},
	{name: "two flavor headers", target: kubeEnv, extra: []string{"Metadata-Flavor: Google"}, want: 403},
	{name: "fragment", target: kubeEnv + "#x", want: 0},
	{name: "asterisk", target: "*", want: 0},
	{name: "POST", method: http.MethodPost, target: kubeEnv, want: 405},
}

func TestPodViewAttacks(t *testing.T) {
	require.GreaterOrEqual(t, len(attacks), 40)
	ts := startServer(t, metadata.Config{}, loadSample(t))
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			method := a.method
			if method == "" {
				method = http.MethodGet
			}
			resp, body := ts.raw(t, podAddr, method, rawRequest(method, a.target, a.extra...))
			if a.want != 0 {
				assert.Equal(t, a.want, resp.StatusCode, "body: %s", body)
			}
			assert.Empty(t, leaks(body), "body leaks concealed data: %s", body)
			assert.Empty(t, leaks(headerText(resp.Header)), "headers leak concealed data: %v", resp.Header)
			assert.Equal(t, "Google", resp.Header.Get("Metadata-Flavor"))
		})
	}
	assert.GreaterOrEqual(t, ts.metric(t, "nodetrust_metadata_concealment_hits_total", "kind", "path"), 10.0)
	assert.GreaterOrEqual(t, ts.metric(t, "nodetrust_metadata_concealment_hits_total", "kind", "redacted"), 10.0)
}

// TestPodViewShowsTheRest checks that the pod view is concealed, not empty:
// the dumps the suite reads hold the ordinary data.
func TestPodViewShowsTheRest(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	pod := client(t, podAddr)
	_, body := ts.get(t, pod, attrs)
	assert.Equal(t, "cluster-location\n", body)
	_, body = ts.get(t, pod, v1+"?recursive=true")
	assert.Contains(t, body, `"cluster-location":"europe-west1"`)
	assert.Contains(t, body, `"projectId":"demo-project"`)
	assert.Contains(t, body, `"cluster-name":"demo"`)
	assert.Contains(t, body, `"email":"node-1@demo-project.iam.gserviceaccount.com"`)
	_, body = ts.get(t, pod, attrs+"cluster-location")
	assert.Equal(t, "europe-west1", body)
}

// TestHostViewReadsSecrets makes sure the suite would notice concealment
// applied to everyone: the host reads what pods cannot.
func TestHostViewReadsSecrets(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	host := client(t, hostAddr)
	tests := []struct {
		name, target, want string
	}{
		{name: "kube-env", target: kubeEnv, want: "KUBELET_BOOTSTRAP_TOKEN: abcdef.0123456789abcdef"},
		{name: "percent-encoded kube-env", target: attrs + "%6b%75%62%65-env", want: "CA_CERT: c2FtcGxlLWNh"},
		{name: "bootstrap token", target: attrs + "nodetrust-bootstrap-token", want: "abcdef.0123456789abcdef"},
		{name: "attributes listing", target: attrs, want: "kube-env\n"},
		{name: "recursive", target: v1 + "?recursive=true", want: "KUBELET_BOOTSTRAP_TOKEN"},
		{name: "recursive text", target: v1 + "instance/?recursive=true&alt=text", want: "attributes/nodetrust-bootstrap-token abcdef.0123456789abcdef"},
		{name: "token", target: v1 + "instance/service-accounts/default/token", want: "ya29.sample-node-token"},
		{name: "identity", target: v1 + "instance/service-accounts/default/identity?audience=x", want: "eyJhbGciOiJSUzI1NiJ9.sample-identity.c2ln"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := ts.get(t, host, tt.target)
			require.Equal(t, 200, resp.StatusCode)
			assert.Contains(t, body, tt.want)
			assert.NotEmpty(t, leaks(body), "the leak check must see host data")
		})
	}
	// No pod of node-2 exists in this test, but node-2's host reads its own
	// kube-env and never node-1's.
	_, body := ts.get(t, client(t, node2Host), kubeEnv)
	assert.Contains(t, body, "ghijkl.0123456789ghijkl")
	assert.NotContains(t, body, "abcdef")
}

func TestConcealmentMetric(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	pod, host := client(t, podAddr), client(t, hostAddr)
	hits := func(kind string) float64 {
		return ts.metric(t, "nodetrust_metadata_concealment_hits_total", "kind", kind)
	}
	ts.get(t, host, kubeEnv)
	ts.get(t, host, v1+"?recursive=true")
	assert.Equal(t, 0.0, hits("path")+hits("redacted"), "host reads are not concealment hits")

	for i, target := range []string{kubeEnv, attrs + "%6b%75%62%65-env", v1 + "instance/service-accounts/default/token", kubeEnv + "?alt=json"} {
		resp, _ := ts.get(t, pod, target)
		require.Equal(t, 404, resp.StatusCode)
		assert.Equal(t, float64(i+1), hits("path"), target)
	}
	ts.get(t, pod, v1+"instance/nope")
	ts.get(t, pod, attrs+"KUBE-ENV")
	assert.Equal(t, 4.0, hits("path"), "a path absent from the host view too is a plain 404")

	ts.get(t, pod, attrs)
	assert.Equal(t, 1.0, hits("redacted"))
	ts.get(t, pod, v1+"project/?recursive=true")
	assert.Equal(t, 1.0, hits("redacted"), "nothing concealed under project/")
}

func TestAttackSuiteSelfCheck(t *testing.T) {
	// The leak detector itself: it must flag each value and key, and
	// match key names without regard to case.
	for _, s := range append(append([]string{}, concealedValues...), "KUBE-ENV", "Nodetrust-Bootstrap-Token") {
		assert.NotEmpty(t, leaks("x"+s+"x"), s)
	}
	assert.Empty(t, leaks("cluster-location europe-west1"))
	names := map[string]bool{}
	for _, a := range attacks {
		assert.False(t, names[a.name], "duplicate case name %q", a.name)
		names[a.name] = true
		assert.False(t, strings.ContainsAny(a.target, " \r\n"), a.name)
	}
}
