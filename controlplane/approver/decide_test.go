package approver

import (
	"net"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/instances"
	"github.com/nodetrust/nodetrust/controlplane/pki"
	"github.com/nodetrust/nodetrust/metadata"
)

func req(t *testing.T, cn string, orgs, dns []string, ips []net.IP) []byte {
	k, _ := pki.GenerateKey()
	b, err := pki.NewCSR(k, cn, orgs, dns, ips)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecide(t *testing.T) {
	reg := instances.New(&metadata.Data{Instances: []metadata.Instance{{Name: "n1", HostAddresses: []string{"10.0.0.1"}}}}, nil)
	cu := []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}
	su := []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageServerAuth}
	boot := func(user string, groups ...string) certv1.CertificateSigningRequestSpec {
		return certv1.CertificateSigningRequestSpec{Username: user, Groups: groups}
	}
	for _, tc := range []struct {
		name   string
		spec   certv1.CertificateSigningRequestSpec
		signer string
		cn     string
		orgs   []string
		dns    []string
		ips    []net.IP
		usages []certv1.KeyUsage
		want   Action
	}{
		{"bootstrapper client", boot("system:bootstrap:abcdef", "system:bootstrappers"), csrpolicy.SignerKubeletClient, "system:node:n1", []string{"system:nodes"}, nil, nil, cu, Approve},
		{"self renewal", boot("system:node:n1", "system:nodes"), csrpolicy.SignerKubeletClient, "system:node:n1", []string{"system:nodes"}, nil, nil, cu, Approve},
		{"with key encipherment", boot("system:node:n1", "system:nodes"), csrpolicy.SignerKubeletClient, "system:node:n1", []string{"system:nodes"}, nil, nil, append(cu, certv1.UsageKeyEncipherment), Approve},
		{"other node", boot("system:node:n2", "system:nodes"), csrpolicy.SignerKubeletClient, "system:node:n1", []string{"system:nodes"}, nil, nil, cu, Deny},
		{"extra org", boot("system:node:n1", "system:nodes"), csrpolicy.SignerKubeletClient, "system:node:n1", []string{"system:nodes", "x"}, nil, nil, cu, Deny},
		{"SAN on client", boot("system:node:n1", "system:nodes"), csrpolicy.SignerKubeletClient, "system:node:n1", []string{"system:nodes"}, []string{"n1"}, nil, cu, Deny},
		{"server usage on client", boot("system:node:n1", "system:nodes"), csrpolicy.SignerKubeletClient, "system:node:n1", []string{"system:nodes"}, nil, nil, su, Deny},
		{"unknown requester", boot("alice"), csrpolicy.SignerKubeletClient, "system:node:n1", []string{"system:nodes"}, nil, nil, cu, Leave},
		{"serving owned", boot("system:node:n1", "system:nodes"), csrpolicy.SignerKubeletServing, "system:node:n1", []string{"system:nodes"}, []string{"n1"}, []net.IP{net.ParseIP("10.0.0.1")}, su, Approve},
		{"serving unowned IP", boot("system:node:n1", "system:nodes"), csrpolicy.SignerKubeletServing, "system:node:n1", []string{"system:nodes"}, []string{"n1"}, []net.IP{net.ParseIP("10.0.0.2")}, su, Deny},
		{"serving unknown node", boot("system:node:n9", "system:nodes"), csrpolicy.SignerKubeletServing, "system:node:n9", []string{"system:nodes"}, []string{"n9"}, nil, su, Deny},
		{"serving by bootstrapper", boot("system:bootstrap:abcdef", "system:bootstrappers"), csrpolicy.SignerKubeletServing, "system:node:n1", []string{"system:nodes"}, []string{"n1"}, nil, su, Leave},
		{"generic client", boot("alice"), csrpolicy.SignerAPIServerClient, "alice", nil, nil, nil, cu, Leave},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := tc.spec
			spec.SignerName, spec.Usages, spec.Request = tc.signer, tc.usages, req(t, tc.cn, tc.orgs, tc.dns, tc.ips)
			d := Decide(&certv1.CertificateSigningRequest{Spec: spec}, reg)
			if d.Action != tc.want {
				t.Fatalf("Decide = %v (%s: %s), want %v", d.Action, d.Reason, d.Message, tc.want)
			}
			if d.Action == Deny && (d.Reason == "" || d.Message == "") {
				t.Errorf("denial without reason: %+v", d)
			}
		})
	}
}

func TestShouldCollect(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) metav1.Time { return metav1.NewTime(t0.Add(d)) }
	cond := func(typ certv1.RequestConditionType, d time.Duration) []certv1.CertificateSigningRequestCondition {
		return []certv1.CertificateSigningRequestCondition{{Type: typ, Status: "True", LastUpdateTime: at(d)}}
	}
	mk := func(conds []certv1.CertificateSigningRequestCondition, cert []byte) *certv1.CertificateSigningRequest {
		return &certv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: at(0)},
			Status: certv1.CertificateSigningRequestStatus{Conditions: conds, Certificate: cert}}
	}
	key, _ := pki.GenerateKey()
	ca, _ := pki.NewCA("ca", key, t0, 100*24*time.Hour)
	leaf, _ := pki.Issue(pki.LeafSpec{CommonName: "x", NotBefore: t0, NotAfter: t0.Add(30 * time.Minute)}, key.Public(), ca, key)
	shortCert := pki.EncodeCert(leaf)
	for _, tc := range []struct {
		name string
		csr  *certv1.CertificateSigningRequest
		now  time.Duration
		want bool
	}{
		{"pending 23h", mk(nil, nil), 23 * time.Hour, false},
		{"pending 24h", mk(nil, nil), 24 * time.Hour, true},
		{"denied 59m", mk(cond(certv1.CertificateDenied, 0), nil), 59 * time.Minute, false},
		{"denied 1h", mk(cond(certv1.CertificateDenied, 0), nil), time.Hour, true},
		{"issued 1h", mk(cond(certv1.CertificateApproved, 0), shortCert), time.Hour, true},
		{"issued cert expired", mk(cond(certv1.CertificateApproved, 0), shortCert), 30 * time.Minute, true},
		{"issued fresh", mk(cond(certv1.CertificateApproved, 0), shortCert), 10 * time.Minute, false},
	} {
		if got := ShouldCollect(tc.csr, t0.Add(tc.now)); got != tc.want {
			t.Errorf("%s: ShouldCollect = %v, want %v", tc.name, got, tc.want)
		}
	}
}
