// Package attacks is the pod-view attack suite of the metadata server:
// requests with which a pod tries to read its node's concealed metadata
// (kube-env, the bootstrap token, service-account credentials), sent byte
// for byte over raw TCP. The metadata unit tests run it against the server
// itself and the end-to-end tests run it from inside pod network
// namespaces against the agent's node-local metadata server, so both check
// the same list.
package attacks

import "net/http"

// Attack is one request a pod might try to read concealed data with.
type Attack struct {
	Name   string
	Method string   // GET when empty
	Target string   // the request-target, sent byte for byte
	Extra  []string // extra header lines ("Name: value"), without CRLF
	// Want is the status a pod gets (0 accepts any): from the metadata
	// server for a pod of node-1 of metadata/testdata/sample.yaml, and from
	// the agent's node-local server in test/e2e. An attack whose status
	// would differ between the two must say 0.
	Want int
}

const (
	v1      = "/computeMetadata/v1/"
	attrs   = v1 + "instance/attributes/"
	kubeEnv = attrs + "kube-env"
)

// List returns the regression suite of §2.2, §6 and §8 of the reference:
// every spelling of the concealed entries, every ancestor dump, every
// version and every transport trick. It is also the fuzz seed corpus.
// Each call returns a fresh copy.
func List() []Attack {
	return []Attack{
		// The entries themselves.
		{Name: "direct kube-env", Target: kubeEnv, Want: 404},
		{Name: "direct bootstrap token", Target: attrs + "nodetrust-bootstrap-token", Want: 404},
		{Name: "direct as json", Target: kubeEnv + "?alt=json", Want: 404},
		{Name: "direct as recursive text", Target: kubeEnv + "?alt=text&recursive=true", Want: 404},
		{Name: "project attribute of the same name", Target: v1 + "project/attributes/kube-env", Want: 404},
		{Name: "trailing slash", Target: kubeEnv + "/", Want: 404},
		{Name: "trailing slash on bootstrap token", Target: attrs + "nodetrust-bootstrap-token/", Want: 404},
		// Path spelling.
		{Name: "doubled slash before key", Target: v1 + "instance/attributes//kube-env", Want: 400},
		{Name: "doubled slash after computeMetadata", Target: "/computeMetadata//v1/instance/attributes/kube-env", Want: 400},
		{Name: "leading doubled slash", Target: "//computeMetadata/v1/instance/attributes/kube-env", Want: 400},
		{Name: "percent-encoded letters", Target: attrs + "%6b%75%62%65-env", Want: 404},
		{Name: "percent-encoded upper hex and dash", Target: attrs + "%6B%75%62%65%2Denv", Want: 404},
		{Name: "percent-encoded bootstrap token", Target: attrs + "nodetrust%2dbootstrap%2dtoken", Want: 404},
		{Name: "encoded slash", Target: v1 + "instance/attributes%2Fkube-env", Want: 400},
		{Name: "encoded slashes lower case", Target: v1 + "instance%2fattributes%2fkube-env", Want: 400},
		{Name: "dot-dot segment", Target: v1 + "instance/../instance/attributes/kube-env", Want: 400},
		{Name: "dot segment", Target: v1 + "instance/./attributes/kube-env", Want: 400},
		{Name: "leading dot segment", Target: "/./computeMetadata/v1/instance/attributes/kube-env", Want: 400},
		{Name: "encoded dot-dot", Target: attrs + "%2e%2e/attributes/kube-env", Want: 400},
		{Name: "NUL byte", Target: kubeEnv + "%00", Want: 400},
		{Name: "semicolon in path", Target: kubeEnv + ";x", Want: 404},
		{Name: "semicolon segment", Target: attrs + ";/kube-env", Want: 404},
		{Name: "semicolon in query on the entry", Target: kubeEnv + "?alt=text;recursive=true", Want: 400},
		{Name: "semicolon in query on the directory", Target: attrs + "?alt=text;recursive=true", Want: 400},
		{Name: "upper-case key", Target: attrs + "KUBE-ENV", Want: 404},
		{Name: "mixed-case key", Target: attrs + "Kube-Env", Want: 404},
		{Name: "upper-case prefix", Target: "/COMPUTEMETADATA/V1/instance/attributes/kube-env", Want: 404},
		{Name: "upper-case prefix recursive", Target: "/COMPUTEMETADATA/V1/?recursive=true", Want: 404},
		// Every ancestor, recursively, in both formats.
		{Name: "attributes listing", Target: attrs, Want: 200},
		{Name: "attributes recursive", Target: attrs + "?recursive=true", Want: 200},
		{Name: "attributes recursive json", Target: attrs + "?recursive=true&alt=json", Want: 200},
		{Name: "attributes recursive text", Target: attrs + "?recursive=true&alt=text", Want: 200},
		{Name: "instance recursive", Target: v1 + "instance/?recursive=true", Want: 200},
		{Name: "instance recursive json", Target: v1 + "instance/?recursive=true&alt=json", Want: 200},
		{Name: "instance recursive text", Target: v1 + "instance/?recursive=true&alt=text", Want: 200},
		{Name: "v1 recursive", Target: v1 + "?recursive=true", Want: 200},
		{Name: "v1 recursive json", Target: v1 + "?recursive=true&alt=json", Want: 200},
		{Name: "v1 recursive text", Target: v1 + "?recursive=true&alt=text", Want: 200},
		{Name: "project recursive", Target: v1 + "project/?recursive=true", Want: 200},
		{Name: "project recursive text", Target: v1 + "project/?recursive=true&alt=text", Want: 200},
		{Name: "root recursive", Target: "/?recursive=true", Want: 200},
		// recursive spelled otherwise.
		{Name: "bare recursive", Target: attrs + "?recursive", Want: 200},
		{Name: "bare recursive on instance", Target: v1 + "instance/?recursive", Want: 200},
		{Name: "encoded equals", Target: attrs + "?recursive%3Dtrue", Want: 400},
		{Name: "control byte in key", Target: attrs + "?re%08ecursive=true", Want: 400},
		{Name: "upper-case value", Target: attrs + "?recursive=TRUE", Want: 200},
		{Name: "numeric value", Target: v1 + "instance/?recursive=1", Want: 200},
		{Name: "hex-encoded key", Target: attrs + "?%72%65%63%75%72%73%69%76%65=true", Want: 200},
		{Name: "upper-case key param", Target: attrs + "?Recursive=true", Want: 400},
		{Name: "nonrecursive key", Target: attrs + "?nonrecursive=true", Want: 400},
		{Name: "duplicate recursive", Target: attrs + "?recursive=false&recursive=true", Want: 400},
		// Long-polls.
		{Name: "wait on attributes", Target: attrs + "?wait_for_change=true&last_etag=NONE", Want: 200},
		{Name: "wait on attributes recursive", Target: attrs + "?recursive=true&wait_for_change=true&last_etag=NONE", Want: 200},
		{Name: "wait on instance recursive", Target: v1 + "instance/?recursive=true&wait_for_change=true&last_etag=NONE", Want: 200},
		{Name: "guest agent long-poll", Target: v1 + "?recursive=true&alt=json&wait_for_change=true&last_etag=NONE&timeout_sec=60", Want: 200},
		{Name: "wait on the entry", Target: kubeEnv + "?wait_for_change=true&last_etag=NONE", Want: 404},
		// Legacy versions.
		{Name: "v1beta1 entry", Target: "/computeMetadata/v1beta1/instance/attributes/kube-env", Want: 403},
		{Name: "v1beta1 recursive", Target: "/computeMetadata/v1beta1/instance/attributes/?recursive=true", Want: 403},
		{Name: "v1beta1 without header", Target: "/computeMetadata/v1beta1/instance/?recursive=true", Extra: []string{"Metadata-Flavor:"}, Want: 403},
		{Name: "0.1 entry", Target: "/0.1/meta-data/attributes/kube-env", Want: 403},
		{Name: "0.1 recursive", Target: "/0.1/meta-data/attributes/?recursive=true", Want: 403},
		{Name: "unknown version", Target: "/computeMetadata/v2/instance/attributes/kube-env", Want: 404},
		// Credentials, concealed from pods by default.
		{Name: "default token", Target: v1 + "instance/service-accounts/default/token", Want: 404},
		{Name: "token by email", Target: v1 + "instance/service-accounts/node-1@demo-project.iam.gserviceaccount.com/token", Want: 404},
		{Name: "token with scopes", Target: v1 + "instance/service-accounts/default/token?scopes=x", Want: 404},
		{Name: "identity", Target: v1 + "instance/service-accounts/default/identity?audience=x", Want: 404},
		{Name: "identity full", Target: v1 + "instance/service-accounts/default/identity?audience=x&format=full&licenses=TRUE", Want: 404},
		{Name: "service accounts recursive", Target: v1 + "instance/service-accounts/?recursive=true", Want: 200},
		{Name: "default account recursive", Target: v1 + "instance/service-accounts/default/?recursive=true", Want: 200},
		{Name: "default account listing", Target: v1 + "instance/service-accounts/default/", Want: 200},
		// Transport tricks.
		{Name: "absolute-form URI", Target: "http://metadata.google.internal/computeMetadata/v1/instance/attributes/kube-env", Want: 400},
		{Name: "absolute-form URI recursive", Target: "http://metadata.google.internal/computeMetadata/v1/?recursive=true", Want: 400},
		{Name: "absolute-form URI with IP", Target: "http://169.254.169.254/computeMetadata/v1/instance/attributes/kube-env", Want: 400},
		{Name: "HEAD entry", Method: http.MethodHead, Target: kubeEnv, Want: 404},
		{Name: "HEAD recursive", Method: http.MethodHead, Target: v1 + "?recursive=true", Want: 200},
		{Name: "X-Forwarded-For on entry", Target: kubeEnv, Extra: []string{"X-Forwarded-For: 10.0.0.1"}, Want: 403},
		{Name: "X-Forwarded-For on recursive", Target: v1 + "?recursive=true", Extra: []string{"X-Forwarded-For: 10.0.0.1"}, Want: 403},
		{Name: "empty X-Forwarded-For", Target: v1 + "instance/?recursive=true", Extra: []string{"X-Forwarded-For:"}, Want: 403},
		{Name: "X-Forwarded-For claiming the host", Target: kubeEnv, Extra: []string{"X-Forwarded-For: 127.0.0.1"}, Want: 403},
		{Name: "X-Real-IP claiming the host", Target: kubeEnv, Extra: []string{"X-Real-IP: 127.0.0.1"}, Want: 403},
		{Name: "Forwarded claiming the host", Target: kubeEnv, Extra: []string{"Forwarded: for=127.0.0.1"}, Want: 403},
		{Name: "two flavor headers", Target: kubeEnv, Extra: []string{"Metadata-Flavor: Google"}, Want: 403},
		{Name: "fragment", Target: kubeEnv + "#x", Want: 0},
		{Name: "asterisk", Target: "*", Want: 0},
		{Name: "POST", Method: http.MethodPost, Target: kubeEnv, Want: 405},
	}
}
