package metadata_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/metadata"
)

// assertGCEHeaders checks the headers GCE sends on every response.
func assertGCEHeaders(t *testing.T, resp *http.Response) {
	t.Helper()
	assert.Equal(t, "Google", resp.Header.Get("Metadata-Flavor"))
	assert.Equal(t, "Metadata Server for VM", resp.Header.Get("Server"))
	assert.Equal(t, "0", resp.Header.Get("X-XSS-Protection"))
	assert.Equal(t, "SAMEORIGIN", resp.Header.Get("X-Frame-Options"))
	assert.NotEmpty(t, resp.Header.Get("ETag"))
	assert.Empty(t, resp.Header.Get("Access-Control-Allow-Origin"), "no CORS")
}

func TestServerResponses(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	unknown := client(t, unknownAddr)
	host := client(t, hostAddr)
	pod := client(t, podAddr)
	noFlavor := map[string]string{"Metadata-Flavor": ""}

	tests := []struct {
		name     string
		c        *http.Client
		method   string
		target   string
		hdr      map[string]string
		wantCode int
		wantBody string // substring, case-insensitive
		check    func(t *testing.T, resp *http.Response, body string)
	}{
		{name: "root without flavor header", c: host, target: "/", hdr: noFlavor, wantCode: 200, check: func(t *testing.T, _ *http.Response, body string) {
			assert.Equal(t, "computeMetadata/\n", body)
		}},
		{name: "root from a pod", c: pod, target: "/", hdr: noFlavor, wantCode: 200},
		{name: "computeMetadata listing", c: host, target: "/computeMetadata/", wantCode: 200, check: func(t *testing.T, _ *http.Response, body string) {
			assert.Equal(t, "v1/\n", body)
		}},
		{name: "v1 listing", c: host, target: v1, wantCode: 200, check: func(t *testing.T, resp *http.Response, body string) {
			assert.Equal(t, "instance/\nproject/\n", body)
			assert.Equal(t, "application/text", resp.Header.Get("Content-Type"))
		}},
		{name: "leaf", c: host, target: v1 + "instance/name", wantCode: 200, check: func(t *testing.T, _ *http.Response, body string) {
			assert.Equal(t, "node-1", body)
		}},
		{name: "pod sees its own instance", c: pod, target: v1 + "instance/name", wantCode: 200, check: func(t *testing.T, _ *http.Response, body string) {
			assert.Equal(t, "node-1", body)
		}},
		{name: "other host sees its instance", c: client(t, node2Host), target: v1 + "instance/name", wantCode: 200, check: func(t *testing.T, _ *http.Response, body string) {
			assert.Equal(t, "node-2", body)
		}},
		{name: "project id", c: pod, target: v1 + "project/project-id", wantCode: 200, check: func(t *testing.T, _ *http.Response, body string) {
			assert.Equal(t, "demo-project", body)
		}},
		{name: "missing flavor header", c: host, target: v1 + "instance/name", hdr: noFlavor, wantCode: 403, wantBody: "Missing Metadata-Flavor:Google header"},
		{name: "missing flavor header on v1 root", c: host, target: v1, hdr: noFlavor, wantCode: 403, wantBody: "Missing Metadata-Flavor:Google header"},
		{name: "missing flavor header on computeMetadata", c: host, target: "/computeMetadata/", hdr: noFlavor, wantCode: 403},
		{name: "wrong flavor value", c: host, target: v1 + "instance/name", hdr: map[string]string{"Metadata-Flavor": "google"}, wantCode: 403},
		{name: "legacy X-Google-Metadata-Request header is not enough", c: host, target: v1 + "instance/name", hdr: map[string]string{"Metadata-Flavor": "", "X-Google-Metadata-Request": "True"}, wantCode: 403},
		{name: "X-Forwarded-For", c: host, target: v1 + "instance/name", hdr: map[string]string{"X-Forwarded-For": "10.0.0.9"}, wantCode: 403},
		{name: "empty X-Forwarded-For", c: host, target: v1 + "instance/name", hdr: map[string]string{"X-Forwarded-For": ""}, wantCode: 403},
		{name: "X-Forwarded-For on root", c: host, target: "/", hdr: map[string]string{"X-Forwarded-For": "10.0.0.9"}, wantCode: 403},
		{name: "Forwarded", c: host, target: v1 + "instance/name", hdr: map[string]string{"Forwarded": "for=10.0.0.9"}, wantCode: 403},
		{name: "X-Real-IP", c: host, target: v1 + "instance/name", hdr: map[string]string{"X-Real-IP": "10.0.0.9"}, wantCode: 403},
		{name: "rebound Host", c: host, target: v1 + "instance/name", hdr: map[string]string{"Host": "evil.example"}, wantCode: 403},
		{name: "rebound Host on root", c: host, target: "/", hdr: map[string]string{"Host": "evil.example", "Metadata-Flavor": ""}, wantCode: 403},
		{name: "rebound Host with metadata prefix", c: host, target: v1 + "instance/name", hdr: map[string]string{"Host": "metadata.google.internal.evil.example"}, wantCode: 403},
		{name: "other loopback address as Host", c: host, target: v1 + "instance/name", hdr: map[string]string{"Host": "127.0.0.9"}, wantCode: 403},
		{name: "Host metadata.google.internal", c: host, target: v1 + "instance/name", hdr: map[string]string{"Host": "metadata.google.internal"}, wantCode: 200},
		{name: "Host metadata.google.internal. with port", c: host, target: v1 + "instance/name", hdr: map[string]string{"Host": "METADATA.google.internal.:80"}, wantCode: 200},
		{name: "Host metadata", c: host, target: v1 + "instance/name", hdr: map[string]string{"Host": "metadata"}, wantCode: 200},
		{name: "Host 169.254.169.254", c: host, target: v1 + "instance/name", hdr: map[string]string{"Host": "169.254.169.254"}, wantCode: 200},
		{name: "Host is the listen address", c: host, target: v1 + "instance/name", hdr: map[string]string{"Host": ts.addr}, wantCode: 200},
		{name: "POST", c: host, method: http.MethodPost, target: v1 + "instance/name", wantCode: 405},
		{name: "PUT", c: host, method: http.MethodPut, target: v1 + "instance/guest-attributes/a/b", wantCode: 405},
		{name: "DELETE", c: host, method: http.MethodDelete, target: v1 + "instance/name", wantCode: 405},
		{name: "OPTIONS", c: host, method: http.MethodOptions, target: "/", wantCode: 405},
		{name: "legacy v1beta1 disabled", c: host, target: "/computeMetadata/v1beta1/instance/name", wantCode: 403, wantBody: "legacy"},
		{name: "legacy v1beta1 disabled without header", c: host, target: "/computeMetadata/v1beta1/instance/name", hdr: noFlavor, wantCode: 403},
		{name: "legacy 0.1 disabled", c: host, target: "/0.1/meta-data/attributes/cluster-location", wantCode: 403, wantBody: "legacy"},
		{name: "unknown version", c: host, target: "/computeMetadata/v2/instance/name", wantCode: 404},
		{name: "not found", c: host, target: v1 + "instance/nope", wantCode: 404, check: func(t *testing.T, resp *http.Response, body string) {
			assert.Contains(t, resp.Header.Get("Content-Type"), "text/html")
			assert.Contains(t, body, "404")
		}},
		{name: "leaf with trailing slash", c: host, target: v1 + "instance/name/", wantCode: 404},
		{name: "directory without slash", c: host, target: v1 + "instance/attributes", wantCode: 301, check: func(t *testing.T, resp *http.Response, body string) {
			assert.True(t, strings.HasSuffix(resp.Header.Get("Location"), "/"), "Location %q", resp.Header.Get("Location"))
			assert.Equal(t, v1+"instance/attributes/", resp.Header.Get("Location"))
			assert.Equal(t, v1+"instance/attributes/\n", body)
		}},
		{name: "v1 without slash", c: host, target: "/computeMetadata/v1", wantCode: 301, check: func(t *testing.T, resp *http.Response, _ string) {
			assert.Equal(t, v1, resp.Header.Get("Location"))
		}},
		{name: "computeMetadata without slash", c: host, target: "/computeMetadata", wantCode: 301, check: func(t *testing.T, resp *http.Response, _ string) {
			assert.Equal(t, "/computeMetadata/", resp.Header.Get("Location"))
		}},
		{name: "redirect keeps the query", c: host, target: v1 + "instance?recursive=true", wantCode: 301, check: func(t *testing.T, resp *http.Response, _ string) {
			assert.Equal(t, v1+"instance/?recursive=true", resp.Header.Get("Location"))
		}},
		{name: "unknown query parameter", c: host, target: v1 + "instance/name?foo=1", wantCode: 400},
		{name: "semicolon separator", c: host, target: v1 + "instance/?alt=text;recursive=true", wantCode: 400},
		{name: "duplicate parameter", c: host, target: v1 + "instance/?recursive=true&recursive=true", wantCode: 400},
		{name: "duplicate parameter, different values", c: host, target: v1 + "instance/name?alt=json&alt=text", wantCode: 400},
		{name: "bad boolean", c: host, target: v1 + "instance/?recursive=yes", wantCode: 400},
		{name: "bad alt", c: host, target: v1 + "instance/name?alt=xml", wantCode: 400},
		{name: "zero timeout_sec", c: host, target: v1 + "instance/name?wait_for_change=true&timeout_sec=0", wantCode: 400},
		{name: "alt=json on a listing", c: host, target: v1 + "instance/?alt=json", wantCode: 400},
		{name: "unknown caller on root", c: unknown, target: "/", hdr: noFlavor, wantCode: 403},
		{name: "unknown caller", c: unknown, target: v1 + "instance/name", wantCode: 403},
		{name: "unknown caller on project", c: unknown, target: v1 + "project/project-id", wantCode: 403},
		{name: "HEAD", c: host, method: http.MethodHead, target: v1 + "instance/name", wantCode: 200, check: func(t *testing.T, resp *http.Response, body string) {
			assert.Empty(t, body)
			assert.Equal(t, "6", resp.Header.Get("Content-Length"))
			_, got := ts.get(t, host, v1+"instance/name")
			assert.Equal(t, "node-1", got)
		}},
		{name: "HEAD root without header", c: host, method: http.MethodHead, target: "/", hdr: noFlavor, wantCode: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			resp, body := ts.do(t, tt.c, method, tt.target, tt.hdr)
			require.Equal(t, tt.wantCode, resp.StatusCode, "body: %s", body)
			assertGCEHeaders(t, resp)
			if tt.wantCode == 405 {
				assert.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
			}
			if tt.wantBody != "" {
				assert.Contains(t, strings.ToLower(body), strings.ToLower(tt.wantBody))
			}
			if tt.check != nil {
				tt.check(t, resp, body)
			}
		})
	}
}

func TestAllowedHosts(t *testing.T) {
	ts := startServer(t, metadata.Config{AllowedHosts: []string{"md.example:8080", "[fd00::1]"}}, loadSample(t))
	c := client(t, hostAddr)
	for _, h := range []string{"md.example", "MD.example.:80", "[fd00::1]:80"} {
		resp, _ := ts.do(t, c, http.MethodGet, v1+"instance/name", map[string]string{"Host": h})
		assert.Equal(t, 200, resp.StatusCode, "Host %q", h)
	}
	resp, _ := ts.do(t, c, http.MethodGet, v1+"instance/name", map[string]string{"Host": "other.example"})
	assert.Equal(t, 403, resp.StatusCode)
}

func TestLegacyEndpointsEnabled(t *testing.T) {
	d := loadSample(t)
	d.LegacyEndpoints = true
	ts := startServer(t, metadata.Config{}, d)
	host, pod := client(t, hostAddr), client(t, podAddr)
	noFlavor := map[string]string{"Metadata-Flavor": ""}

	resp, body := ts.do(t, host, http.MethodGet, "/computeMetadata/v1beta1/instance/name", noFlavor)
	require.Equal(t, 200, resp.StatusCode, body)
	assert.Equal(t, "node-1", body)

	resp, body = ts.do(t, host, http.MethodGet, "/computeMetadata/v1beta1/instance/attributes/kube-env", noFlavor)
	require.Equal(t, 200, resp.StatusCode)
	assert.Contains(t, body, "KUBELET_BOOTSTRAP_TOKEN", "the host view is full on v1beta1 too")

	resp, body = ts.do(t, pod, http.MethodGet, "/computeMetadata/v1beta1/instance/attributes/kube-env", noFlavor)
	assert.Equal(t, 404, resp.StatusCode)
	assert.Empty(t, leaks(body))

	resp, body = ts.do(t, host, http.MethodGet, "/computeMetadata/", nil)
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "v1/\nv1beta1/\n", body)

	resp, _ = ts.do(t, host, http.MethodGet, "/0.1/meta-data/attributes/cluster-location", noFlavor)
	assert.Equal(t, 403, resp.StatusCode, "0.1 stays disabled")

	resp, _ = ts.do(t, host, http.MethodGet, v1+"instance/name", noFlavor)
	assert.Equal(t, 403, resp.StatusCode, "v1 still needs the header")
}

// TestListingsMarkDirectories walks the host tree: every listed entry ending
// in "/" is a directory, every other one a leaf.
func TestListingsMarkDirectories(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	c := client(t, hostAddr)
	seen := 0
	var walk func(dir string)
	walk = func(dir string) {
		resp, body := ts.get(t, c, dir)
		require.Equal(t, 200, resp.StatusCode, dir)
		for _, e := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
			require.NotEmpty(t, e, "empty entry in %s", dir)
			seen++
			if strings.HasSuffix(e, "/") {
				// A directory: its listing is served, and the name without
				// the slash redirects.
				resp, _ := ts.get(t, c, dir+strings.TrimSuffix(e, "/"))
				assert.Equal(t, 301, resp.StatusCode, dir+e)
				walk(dir + e)
				continue
			}
			target := dir + e
			if e == "identity" {
				target += "?audience=x"
			}
			resp, _ := ts.get(t, c, target)
			assert.Equal(t, 200, resp.StatusCode, target)
			resp, _ = ts.get(t, c, dir+e+"/")
			assert.Equal(t, 404, resp.StatusCode, "leaf %s with a slash", dir+e)
		}
	}
	walk(v1)
	assert.Greater(t, seen, 30)

	_, body := ts.get(t, c, v1+"instance/")
	for _, want := range []string{"attributes/", "network-interfaces/", "service-accounts/", "name", "id", "zone", "hostname", "machine-type"} {
		assert.Contains(t, strings.Split(body, "\n"), want)
	}
	_, body = ts.get(t, c, v1+"instance/service-accounts/")
	assert.Equal(t, "default/\nnode-1@demo-project.iam.gserviceaccount.com/\n", body)
}

func TestRecursiveJSON(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	c := client(t, hostAddr)
	resp, body := ts.get(t, c, v1+"?recursive=true")
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))

	var got struct {
		Instance struct {
			ID                uint64            `json:"id"`
			Name              string            `json:"name"`
			MachineType       string            `json:"machineType"`
			CPUPlatform       *string           `json:"cpuPlatform"`
			Attributes        map[string]string `json:"attributes"`
			NetworkInterfaces []struct {
				IP            string   `json:"ip"`
				DNSServers    []string `json:"dnsServers"`
				AccessConfigs []struct {
					ExternalIP string `json:"externalIp"`
					Type       string `json:"type"`
				} `json:"accessConfigs"`
			} `json:"networkInterfaces"`
			ServiceAccounts map[string]struct {
				Email   string   `json:"email"`
				Aliases []string `json:"aliases"`
				Scopes  []string `json:"scopes"`
			} `json:"serviceAccounts"`
		} `json:"instance"`
		Project struct {
			ProjectID        string            `json:"projectId"`
			NumericProjectID uint64            `json:"numericProjectId"`
			Attributes       map[string]string `json:"attributes"`
		} `json:"project"`
	}
	dec := json.NewDecoder(strings.NewReader(body))
	require.NoError(t, dec.Decode(&got), body)

	assert.Equal(t, uint64(4520031799277581759), got.Instance.ID)
	assert.Equal(t, "node-1", got.Instance.Name)
	assert.Equal(t, "projects/123456789012/machineTypes/e2-standard-2", got.Instance.MachineType)
	assert.NotNil(t, got.Instance.CPUPlatform, "cpuPlatform is camelCase")
	assert.Equal(t, "europe-west1", got.Instance.Attributes["cluster-location"], "attribute keys verbatim")
	assert.Contains(t, got.Instance.Attributes["kube-env"], "KUBELET_BOOTSTRAP_TOKEN", "the host view has kube-env")
	require.Len(t, got.Instance.NetworkInterfaces, 1)
	assert.Equal(t, "10.128.0.2", got.Instance.NetworkInterfaces[0].IP)
	assert.Equal(t, []string{"169.254.169.254"}, got.Instance.NetworkInterfaces[0].DNSServers)
	require.Len(t, got.Instance.NetworkInterfaces[0].AccessConfigs, 1)
	assert.Equal(t, "203.0.113.10", got.Instance.NetworkInterfaces[0].AccessConfigs[0].ExternalIP)
	assert.Equal(t, "ONE_TO_ONE_NAT", got.Instance.NetworkInterfaces[0].AccessConfigs[0].Type)
	const email = "node-1@demo-project.iam.gserviceaccount.com"
	assert.Contains(t, got.Instance.ServiceAccounts, "default")
	assert.Contains(t, got.Instance.ServiceAccounts, email, "SA emails verbatim")
	assert.Equal(t, email, got.Instance.ServiceAccounts["default"].Email)
	assert.Equal(t, []string{"default"}, got.Instance.ServiceAccounts["default"].Aliases)
	assert.Equal(t, "demo-project", got.Project.ProjectID)
	assert.Equal(t, uint64(123456789012), got.Project.NumericProjectID)
	assert.Equal(t, "demo", got.Project.Attributes["cluster-name"])

	for _, kebab := range []string{`"numeric-project-id"`, `"network-interfaces"`, `"service-accounts"`, `"machine-type"`, `"project-id"`} {
		assert.NotContains(t, body, kebab)
	}
	assert.NotContains(t, body, "ya29.sample-node-token", "tokens are not in recursive dumps")
	assert.NotContains(t, body, "sample-identity", "identity is not in recursive dumps")

	resp, body = ts.get(t, c, v1+"instance/service-accounts/?recursive=true")
	require.Equal(t, 200, resp.StatusCode)
	var sas map[string]map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &sas))
	assert.Len(t, sas, 2)
	assert.Equal(t, email, sas[email]["email"])

	resp, body = ts.get(t, c, v1+"instance/service-accounts/default/?recursive=true")
	require.Equal(t, 200, resp.StatusCode)
	var sa map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &sa))
	assert.ElementsMatch(t, []string{"aliases", "email", "scopes"}, keys(sa), "no token in the account dump")
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestRecursiveText(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	c := client(t, hostAddr)
	resp, body := ts.get(t, c, v1+"instance/?recursive=true&alt=text")
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "application/text", resp.Header.Get("Content-Type"))
	lines := strings.Split(body, "\n")
	for _, want := range []string{
		"name node-1",
		"attributes/cluster-location europe-west1",
		"network-interfaces/0/ip 10.128.0.2",
		"network-interfaces/0/access-configs/0/external-ip 203.0.113.10",
		"service-accounts/default/email node-1@demo-project.iam.gserviceaccount.com",
		"service-accounts/default/scopes https://www.googleapis.com/auth/cloud-platform",
	} {
		assert.Contains(t, lines, want)
	}
	assert.NotContains(t, body, "ya29.sample-node-token")

	_, body = ts.get(t, c, v1+"project/?recursive=true&alt=text")
	assert.Contains(t, strings.Split(body, "\n"), "project-id demo-project")
	assert.Contains(t, strings.Split(body, "\n"), "numeric-project-id 123456789012")
}

func TestLeafFormats(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	c := client(t, hostAddr)
	tests := []struct {
		name, target, wantBody, wantType string
	}{
		{name: "text", target: "instance/name", wantBody: "node-1", wantType: "application/text"},
		{name: "alt=json", target: "instance/name?alt=json", wantBody: `"node-1"`, wantType: "application/json"},
		{name: "alt=text", target: "instance/name?alt=text", wantBody: "node-1", wantType: "application/text"},
		{name: "number as json", target: "project/numeric-project-id?alt=json", wantBody: "123456789012", wantType: "application/json"},
		{name: "attribute as json", target: "instance/attributes/cluster-location?alt=json", wantBody: `"europe-west1"`, wantType: "application/json"},
		{name: "list leaf", target: "instance/service-accounts/default/scopes", wantBody: "https://www.googleapis.com/auth/cloud-platform\n", wantType: "application/text"},
		{name: "list leaf as json", target: "instance/service-accounts/default/scopes?alt=json", wantBody: `["https://www.googleapis.com/auth/cloud-platform"]`, wantType: "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := ts.get(t, c, v1+tt.target)
			require.Equal(t, 200, resp.StatusCode)
			assert.Equal(t, tt.wantBody, body)
			assert.Equal(t, tt.wantType, resp.Header.Get("Content-Type"))
		})
	}
	_, body := ts.get(t, c, v1+"instance/name?alt=json")
	var s string
	require.NoError(t, json.Unmarshal([]byte(body), &s))
	assert.Equal(t, "node-1", s)
}

func TestTokenAndIdentity(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	host, pod := client(t, hostAddr), client(t, podAddr)
	const sa = v1 + "instance/service-accounts/"

	for _, acct := range []string{"default", "node-1@demo-project.iam.gserviceaccount.com"} {
		resp, body := ts.get(t, host, sa+acct+"/token")
		require.Equal(t, 200, resp.StatusCode, body)
		assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		var tok map[string]any
		require.NoError(t, json.Unmarshal([]byte(body), &tok))
		assert.Equal(t, map[string]any{"access_token": "ya29.sample-node-token", "expires_in": float64(3599), "token_type": "Bearer"}, tok)

		resp, _ = ts.get(t, host, sa+acct+"/token?scopes=a,b")
		assert.Equal(t, 200, resp.StatusCode, "scopes is accepted")

		resp, body = ts.get(t, host, sa+acct+"/identity")
		assert.Equal(t, 400, resp.StatusCode, "identity needs an audience")
		assert.Contains(t, body, "audience")

		resp, body = ts.get(t, host, sa+acct+"/identity?audience=")
		assert.Equal(t, 400, resp.StatusCode, "an empty audience is no audience: %s", body)

		resp, body = ts.get(t, host, sa+acct+"/identity?audience=https://example.com&format=full&licenses=TRUE")
		require.Equal(t, 200, resp.StatusCode)
		assert.Equal(t, "eyJhbGciOiJSUzI1NiJ9.sample-identity.c2ln", body)

		// Both are concealed from pods by default.
		resp, body = ts.get(t, pod, sa+acct+"/token")
		assert.Equal(t, 404, resp.StatusCode)
		assert.Empty(t, leaks(body))
		resp, body = ts.get(t, pod, sa+acct+"/identity?audience=x")
		assert.Equal(t, 404, resp.StatusCode)
		assert.Empty(t, leaks(body))
		_, body = ts.get(t, pod, sa+acct+"/")
		assert.Equal(t, "aliases\nemail\nscopes\n", body)
	}
}

func TestPodViewOptIn(t *testing.T) {
	d := loadSample(t)
	d.PodView = metadata.PodView{ServiceAccountTokens: true, Identity: true}
	ts := startServer(t, metadata.Config{}, d)
	pod := client(t, podAddr)
	resp, body := ts.get(t, pod, v1+"instance/service-accounts/default/token")
	require.Equal(t, 200, resp.StatusCode)
	assert.Contains(t, body, "ya29.sample-node-token")
	resp, body = ts.get(t, pod, v1+"instance/service-accounts/default/identity?audience=x")
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "eyJhbGciOiJSUzI1NiJ9.sample-identity.c2ln", body)
	resp, _ = ts.get(t, pod, kubeEnv)
	assert.Equal(t, 404, resp.StatusCode, "opening tokens does not open attributes")
}

func TestETags(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	host, pod := client(t, hostAddr), client(t, podAddr)
	etag := func(c *http.Client, target string) string {
		resp, _ := ts.get(t, c, target)
		require.Equal(t, 200, resp.StatusCode, target)
		e := resp.Header.Get("ETag")
		require.NotEmpty(t, e)
		return e
	}
	assert.Equal(t, etag(host, attrs), etag(host, attrs), "stable")
	assert.NotEqual(t, etag(host, attrs), etag(pod, attrs), "the pod listing differs, and so does its ETag")
	assert.Equal(t, etag(host, v1+"instance/name"), etag(pod, v1+"instance/name"), "same content, same ETag")
	assert.NotEqual(t, etag(host, v1+"instance/name"), etag(host, v1+"instance/name?alt=json"))

	// A reload with the same content keeps every ETag.
	before := etag(pod, v1+"?recursive=true")
	require.NoError(t, ts.srv.SetData(loadSample(t)))
	assert.Equal(t, before, etag(pod, v1+"?recursive=true"))
}

func TestRequestMetrics(t *testing.T) {
	ts := startServer(t, metadata.Config{}, loadSample(t))
	ts.get(t, client(t, podAddr), v1+"instance/name")
	ts.get(t, client(t, hostAddr), v1+"instance/nope")
	ts.do(t, client(t, hostAddr), http.MethodGet, v1, map[string]string{"X-Forwarded-For": "1.2.3.4"})
	assert.Equal(t, 1.0, ts.metric(t, "nodetrust_metadata_requests_total", "view", "pod", "code", "200"))
	assert.Equal(t, 1.0, ts.metric(t, "nodetrust_metadata_requests_total", "view", "host", "code", "404"))
	assert.Equal(t, 1.0, ts.metric(t, "nodetrust_metadata_denied_total", "reason", "forwarded"))
	assert.Equal(t, 1.0, ts.metric(t, "nodetrust_metadata_data_generation"))
}
