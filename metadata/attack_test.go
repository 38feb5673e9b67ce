package metadata_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/test/attacks"
)

// TestPodViewAttacks sends the shared attack suite (test/attacks, which
// test/e2e also runs from inside pod namespaces) from a pod of node-1: each
// gets its expected status and nothing concealed, in the body or headers.
func TestPodViewAttacks(t *testing.T) {
	list := attacks.List()
	require.GreaterOrEqual(t, len(list), 85)
	ts := startServer(t, metadata.Config{}, loadSample(t))
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(podAddr)}, Timeout: 5 * time.Second}
	for _, a := range list {
		t.Run(a.Name, func(t *testing.T) {
			resp, err := attacks.Send(d.DialContext, ts.addr, a, 20*time.Second)
			require.NoError(t, err)
			body := resp.Body
			if a.Want != 0 {
				assert.Equal(t, a.Want, resp.Status, "body: %s", body)
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
	for _, a := range attacks.List() {
		assert.False(t, names[a.Name], "duplicate case name %q", a.Name)
		names[a.Name] = true
		assert.False(t, strings.ContainsAny(a.Target, " \r\n"), a.Name)
		assert.Equal(t, rawRequest(a.MethodOf(), a.Target, a.Extra...), a.Request(), a.Name)
	}
}
