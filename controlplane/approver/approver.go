// Package approver decides on certificate signing requests the way
// kube-controller-manager's approver does for kubelet client certificates,
// adds an instance-registry check for kubelet serving certificates, has
// approved requests signed by the signer process, and collects old
// requests and expired tokens.
package approver

import (
	"crypto/x509"
	"fmt"
	"slices"

	certv1 "k8s.io/api/certificates/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/instances"
	"github.com/nodetrust/nodetrust/controlplane/pki"
)

// Action is what the approver does with a request.
type Action int

// The actions.
const (
	Leave   Action = iota // leave pending for a person
	Approve               // add the Approved condition
	Deny                  // add the Denied condition
)

func (a Action) String() string {
	return [...]string{"leave", "approve", "deny"}[a]
}

// Decision is an action with the condition's reason and message.
type Decision struct {
	Action  Action
	Reason  string
	Message string
}

func leave(msg string) Decision { return Decision{Action: Leave, Message: msg} }

func deny(reason, format string, args ...any) Decision {
	return Decision{Action: Deny, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Decide returns what to do with a pending request. It is a pure function
// of the request and the registry.
func Decide(c *certv1.CertificateSigningRequest, reg *instances.Registry) Decision {
	if csrpolicy.StateOf(c.Status) != csrpolicy.Pending {
		return leave("not pending")
	}
	// The API checked the request's signature when it was created and the
	// signer checks it again; parsing is enough here.
	req, err := pki.ParseCSRUnverified(c.Spec.Request)
	if err != nil {
		return deny("InvalidRequest", "%v", err)
	}
	switch c.Spec.SignerName {
	case csrpolicy.SignerKubeletClient:
		return decideClient(c, req)
	case csrpolicy.SignerKubeletServing:
		return decideServing(c, req, reg)
	}
	return leave("signer " + c.Spec.SignerName + " needs manual approval")
}

func decideClient(c *certv1.CertificateSigningRequest, req *x509.CertificateRequest) Decision {
	if err := csrpolicy.ValidateKubeletClient(req, c.Spec.Usages); err != nil {
		return deny("InvalidKubeletClientRequest", "%v", err)
	}
	u := c.Spec.Username
	switch {
	case u == req.Subject.CommonName && slices.Contains(c.Spec.Groups, csrpolicy.NodesGroup):
		return Decision{Action: Approve, Reason: "AutoApproved", Message: "Auto approving self kubelet client certificate after checking the node identity."}
	case slices.Contains(c.Spec.Groups, csrpolicy.BootstrapGroup):
		return Decision{Action: Approve, Reason: "AutoApproved", Message: "Auto approving kubelet client certificate for a bootstrap token."}
	case csrpolicy.IsNodeUser(u):
		return deny("NodeNameMismatch", "node %q may not request a client certificate for %q", u, req.Subject.CommonName)
	}
	return leave("requester " + u + " is neither the node nor a bootstrapper")
}

func decideServing(c *certv1.CertificateSigningRequest, req *x509.CertificateRequest, reg *instances.Registry) Decision {
	if err := csrpolicy.ValidateKubeletServing(req, c.Spec.Usages); err != nil {
		return deny("InvalidKubeletServingRequest", "%v", err)
	}
	if c.Spec.Username != req.Subject.CommonName || !slices.Contains(c.Spec.Groups, csrpolicy.NodesGroup) {
		if csrpolicy.IsNodeUser(c.Spec.Username) {
			return deny("NodeNameMismatch", "node %q may not request a serving certificate for %q", c.Spec.Username, req.Subject.CommonName)
		}
		return leave("serving certificate not requested by the node itself")
	}
	node, _ := csrpolicy.NodeName(req.Subject.CommonName)
	if reg == nil {
		return leave("no instance registry")
	}
	if err := reg.CheckOwned(node, req.IPAddresses, req.DNSNames); err != nil {
		return deny("SubjectAltNameNotOwned", "%v", err)
	}
	return Decision{Action: Approve, Reason: "AutoApproved", Message: "Auto approving kubelet serving certificate: every name belongs to the node in the instance registry."}
}
