package csr

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/internal/clock"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func parseLeaf(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("no PEM in %q", b)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIssuedThroughWatch(t *testing.T) {
	leakCheck(t)
	f := newFake(t)
	key := newKey(t)
	ch := start(t, f.client(clock.NewFake(t0)), ClientRequest("node-1", key))
	name := f.waitCreated()
	f.waitWatches(1)
	f.approve(name, nil, time.Time{})
	r := await(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if cert := parseLeaf(t, r.cert); !key.PublicKey.Equal(cert.PublicKey) || cert.Subject.CommonName != "system:node:node-1" {
		t.Errorf("certificate for %v", cert.Subject)
	}
	want, _ := Name(key.Public(), nodeSubject("node-1"), ClientRequest("node-1", key).Usages)
	if name != want {
		t.Errorf("created %q, want the deterministic %q", name, want)
	}
	if _, gets, _ := f.counts(); gets != 0 {
		t.Errorf("%d GETs; the watch alone should suffice", gets)
	}
	if f.watches[0] != "1" || f.selector[0] != "metadata.name="+name {
		t.Errorf("watched from resourceVersion %q with selector %q, want 1 and the name", f.watches[0], f.selector[0])
	}
	stored := f.objs[name]
	if stored.Spec.SignerName != SignerKubeletClient || !slices.Equal(stored.Spec.Usages, []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}) ||
		stored.Spec.ExpirationSeconds != nil {
		t.Errorf("spec %+v", stored.Spec)
	}
}

func TestAlreadyIssuedReturnsAtOnce(t *testing.T) {
	f := newFake(t)
	key := newKey(t)
	r := ClientRequest("node-1", key)
	r.Name = "fixed"
	csrPEM, _ := r.pem()
	f.seed(&certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "fixed"},
		Spec:       certv1.CertificateSigningRequestSpec{Request: csrPEM, SignerName: r.SignerName, Usages: r.Usages},
	})
	f.approve("fixed", nil, time.Time{})
	cert, err := f.client(clock.NewFake(t0)).Request(t.Context(), r)
	if err != nil || cert == nil {
		t.Fatalf("Request: %v", err)
	}
	if _, _, watches := f.counts(); watches != 0 {
		t.Errorf("%d watches of an issued request", watches)
	}
}

func TestWatchUnsupportedFallsBackToPolling(t *testing.T) {
	for _, status := range []int{http.StatusMethodNotAllowed, http.StatusForbidden, http.StatusInternalServerError} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			leakCheck(t)
			f := newFake(t)
			f.watchStatus = status
			clk := clock.NewFake(t0)
			key := newKey(t)
			ch := start(t, f.client(clk), ClientRequest("node-1", key))
			f.approve(f.waitCreated(), nil, time.Time{})
			r := drive(t, clk, 3*time.Second, ch)
			if r.err != nil {
				t.Fatal(r.err)
			}
			_, gets, watches := f.counts()
			if gets == 0 {
				t.Error("no GET: did not poll")
			}
			want := 1
			if status >= 500 {
				want = maxWatchFailures // transient errors are retried first
			}
			if watches != want {
				t.Errorf("%d watches before polling, want %d", watches, want)
			}
		})
	}
}

func TestWatchClosedEarlyWatchesAgain(t *testing.T) {
	leakCheck(t)
	f := newFake(t)
	f.closeWatches = 2
	clk := clock.NewFake(t0)
	ch := start(t, f.client(clk), ClientRequest("node-1", newKey(t)))
	name := f.waitCreated()
	// Each early end costs a pause on the clock before the next watch.
	for n := 1; n <= 2; n++ {
		f.waitWatches(n)
		if !clk.WaitForWaiters(2, 5*time.Second) {
			t.Fatal("client did not pause after the watch ended")
		}
		clk.Advance(3 * time.Second)
	}
	f.waitWatches(3)
	f.approve(name, nil, time.Time{})
	r := await(t, ch)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if _, gets, watches := f.counts(); gets != 0 || watches != 3 {
		t.Errorf("%d GETs and %d watches, want 0 and 3", gets, watches)
	}
	for i, rv := range f.watches {
		if rv != "1" {
			t.Errorf("watch %d from resourceVersion %q, want 1", i, rv)
		}
	}
}

func TestWatchGoneReadsAgain(t *testing.T) {
	f := newFake(t)
	f.goneWatches = 1
	ch := start(t, f.client(clock.NewFake(t0)), ClientRequest("node-1", newKey(t)))
	name := f.waitCreated()
	f.waitWatches(2)
	f.approve(name, nil, time.Time{})
	if r := await(t, ch); r.err != nil {
		t.Fatal(r.err)
	}
	if _, gets, _ := f.counts(); gets != 1 {
		t.Errorf("%d GETs after 410 Gone, want 1", gets)
	}
}

func TestFailsFast(t *testing.T) {
	for _, tc := range []struct {
		name   string
		act    func(f *fakeAPI, name string)
		want   error
		reason string
	}{
		{"denied", func(f *fakeAPI, n string) {
			f.update(n, func(c *certv1.CertificateSigningRequest) {
				c.Status.Conditions = append(c.Status.Conditions, cond(certv1.CertificateDenied, "SubjectAltNameNotOwned", "IP 10.9.9.9 is not an address of node-1"))
			})
		}, ErrDenied, "SubjectAltNameNotOwned"},
		{"failed", func(f *fakeAPI, n string) {
			f.update(n, func(c *certv1.CertificateSigningRequest) {
				c.Status.Conditions = append(c.Status.Conditions, cond(certv1.CertificateApproved, "AutoApproved", ""),
					cond(certv1.CertificateFailed, "SignerValidationFailure", "key too weak"))
			})
		}, ErrFailed, "SignerValidationFailure"},
		{"deleted", func(f *fakeAPI, n string) { f.remove(n) }, ErrDeleted, ""},
		{"uid changed", func(f *fakeAPI, n string) {
			f.update(n, func(c *certv1.CertificateSigningRequest) { c.UID = "someone-else" })
		}, ErrDeleted, ""},
		{"approved for another key", func(f *fakeAPI, n string) { f.approve(n, newKey(f.t).Public(), time.Time{}) }, ErrBadCertificate, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			f := newFake(t)
			ch := start(t, f.client(clock.NewFake(t0)), ClientRequest("node-1", newKey(t)))
			name := f.waitCreated()
			f.waitWatches(1)
			tc.act(f, name)
			r := await(t, ch) // no clock advance: it must fail on the event
			if !errors.Is(r.err, tc.want) {
				t.Fatalf("err %v, want %v", r.err, tc.want)
			}
			if tc.reason != "" {
				var ce *ConditionError
				if !errors.As(r.err, &ce) || ce.Reason != tc.reason || ce.Message == "" || !strings.Contains(r.err.Error(), ce.Message) {
					t.Errorf("err %v: want reason %q and its message", r.err, tc.reason)
				}
			}
		})
	}
}

func TestNeverApprovedTimesOut(t *testing.T) {
	leakCheck(t)
	f := newFake(t)
	clk := clock.NewFake(t0)
	ch := start(t, f.client(clk), ClientRequest("node-1", newKey(t)))
	f.waitCreated()
	f.waitWatches(1)
	clk.Advance(15*time.Minute - time.Second)
	select {
	case r := <-ch:
		t.Fatalf("returned before WaitTimeout: %v", r.err)
	case <-time.After(20 * time.Millisecond):
	}
	clk.Advance(time.Second)
	r := await(t, ch)
	if !errors.Is(r.err, ErrTimeout) || errors.Is(r.err, context.Canceled) {
		t.Fatalf("err %v, want ErrTimeout", r.err)
	}
}

func TestCancelReturnsAtOnce(t *testing.T) {
	leakCheck(t)
	f := newFake(t)
	ctx, cancel := context.WithCancel(t.Context())
	ch := make(chan result, 1)
	c := f.client(clock.NewFake(t0))
	go func() {
		cert, err := c.Request(ctx, ClientRequest("node-1", newKey(t)))
		ch <- result{cert, err}
	}()
	f.waitWatches(1)
	cancel()
	if r := await(t, ch); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", r.err)
	}
}

// seedFor stores a request named name made from r but signed by key.
func seedFor(t *testing.T, f *fakeAPI, name string, r Request, key *ecdsa.PrivateKey) {
	t.Helper()
	r.Key = key
	csrPEM, err := r.pem()
	if err != nil {
		t.Fatal(err)
	}
	f.seed(&certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       certv1.CertificateSigningRequestSpec{Request: csrPEM, SignerName: r.SignerName, Usages: r.Usages},
	})
}

func TestReattach(t *testing.T) {
	leakCheck(t)
	f := newFake(t)
	key := newKey(t)
	r := ClientRequest("node-1", key)
	name, _ := Name(key.Public(), r.Subject, r.Usages)
	seedFor(t, f, name, r, key) // a request from before a restart
	ch := start(t, f.client(clock.NewFake(t0)), r)
	f.waitWatches(1)
	f.approve(name, nil, time.Time{})
	res := await(t, ch)
	if res.err != nil {
		t.Fatal(res.err)
	}
	if len(f.objs) != 1 {
		t.Errorf("%d requests, want the one re-attached to", len(f.objs))
	}
}

func TestIncompatibleExisting(t *testing.T) {
	key := newKey(t)
	base := ClientRequest("node-1", key)
	for _, tc := range []struct {
		name  string
		setup func(f *fakeAPI, name string)
		also  error
	}{
		{"other key", func(f *fakeAPI, n string) { seedFor(t, f, n, base, newKey(t)) }, nil},
		{"other signer", func(f *fakeAPI, n string) {
			r := base
			r.SignerName = "example.com/other"
			seedFor(t, f, n, r, key)
		}, nil},
		{"other subject", func(f *fakeAPI, n string) { seedFor(t, f, n, ClientRequest("node-2", key), key) }, nil},
		{"other SANs", func(f *fakeAPI, n string) {
			r := base
			r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)}
			seedFor(t, f, n, r, key)
		}, nil},
		{"denied", func(f *fakeAPI, n string) {
			seedFor(t, f, n, base, key)
			f.update(n, func(c *certv1.CertificateSigningRequest) {
				c.Status.Conditions = append(c.Status.Conditions, cond(certv1.CertificateDenied, "Nope", "no"))
			})
		}, ErrDenied},
		{"expired certificate", func(f *fakeAPI, n string) {
			seedFor(t, f, n, base, key)
			f.approve(n, nil, t0.Add(-time.Minute))
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t)
			name, _ := Name(key.Public(), base.Subject, base.Usages)
			tc.setup(f, name)
			_, err := f.client(clock.NewFake(t0)).Request(t.Context(), base)
			if !errors.Is(err, ErrIncompatible) {
				t.Fatalf("err %v, want ErrIncompatible", err)
			}
			if tc.also != nil && !errors.Is(err, tc.also) {
				t.Errorf("err %v, want also %v", err, tc.also)
			}
			checkNoGoroutines(t)
		})
	}
}

func TestAPIErrors(t *testing.T) {
	t.Run("unauthorized", func(t *testing.T) {
		f := newFake(t)
		f.token = "abcdef.0123456789abcdef"
		c := f.client(clock.NewFake(t0))
		c.Token = "abcdef.wrongwrongwrong1"
		_, err := c.Request(t.Context(), ClientRequest("node-1", newKey(t)))
		if !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("err %v, want ErrUnauthorized", err)
		}
		if strings.Contains(err.Error(), "wrongwrong") {
			t.Errorf("error reveals the token: %v", err)
		}
	})
	for _, tc := range []struct {
		code int
		want error
	}{
		{http.StatusForbidden, ErrForbidden},
		{http.StatusUnprocessableEntity, nil},
		{http.StatusServiceUnavailable, nil},
	} {
		t.Run(http.StatusText(tc.code), func(t *testing.T) {
			f := newFake(t)
			f.createStatus, f.createMsg = tc.code, "the message from the API"
			_, err := f.client(clock.NewFake(t0)).Request(t.Context(), ClientRequest("node-1", newKey(t)))
			var ae *APIError
			if !errors.As(err, &ae) || ae.Code != tc.code {
				t.Fatalf("err %v, want an APIError %d", err, tc.code)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("err %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), "the message from the API") || !strings.Contains(err.Error(), f.srv.URL) {
				t.Errorf("err %q lacks the API's message or the server URL", err)
			}
		})
	}
}

func TestRequestChecks(t *testing.T) {
	key := newKey(t)
	for name, r := range map[string]Request{
		"no key":         {SignerName: SignerKubeletClient, Usages: []certv1.KeyUsage{certv1.UsageClientAuth}},
		"no signer":      {Key: key, Usages: []certv1.KeyUsage{certv1.UsageClientAuth}},
		"no usages":      {Key: key, SignerName: SignerKubeletClient},
		"short duration": func() Request { r := ClientRequest("n", key); r.Duration = 5 * time.Minute; return r }(),
	} {
		if _, err := (&Client{Server: "https://127.0.0.1:1"}).Request(t.Context(), r); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestDurationIsSent(t *testing.T) {
	f := newFake(t)
	r := ClientRequest("node-1", newKey(t))
	r.Duration = 2 * time.Hour
	ch := start(t, f.client(clock.NewFake(t0)), r)
	name := f.waitCreated()
	f.approve(name, nil, time.Time{})
	if res := await(t, ch); res.err != nil {
		t.Fatal(res.err)
	}
	if es := f.objs[name].Spec.ExpirationSeconds; es == nil || *es != 7200 {
		t.Errorf("expirationSeconds %v, want 7200", es)
	}
}

func TestRequestShapes(t *testing.T) {
	ec := newKey(t)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ds, ke, ca, sa := certv1.UsageDigitalSignature, certv1.UsageKeyEncipherment, certv1.UsageClientAuth, certv1.UsageServerAuth
	if got := ClientRequest("n", ec).Usages; !slices.Equal(got, []certv1.KeyUsage{ds, ca}) {
		t.Errorf("ECDSA client usages %v", got)
	}
	if got := ClientRequest("n", rk).Usages; !slices.Equal(got, []certv1.KeyUsage{ds, ke, ca}) {
		t.Errorf("RSA client usages %v", got)
	}
	s := ServingRequest("n", ec, []string{"n.example"}, []net.IP{net.IPv4(10, 0, 0, 1)})
	if !slices.Equal(s.Usages, []certv1.KeyUsage{ds, sa}) || s.SignerName != SignerKubeletServing || s.Subject.CommonName != "system:node:n" ||
		!slices.Equal(s.Subject.Organization, []string{"system:nodes"}) || len(s.DNSNames) != 1 || len(s.IPAddresses) != 1 {
		t.Errorf("serving request %+v", s)
	}
	if got := ServingRequest("n", rk, nil, nil).Usages; !slices.Equal(got, []certv1.KeyUsage{ds, ke, sa}) {
		t.Errorf("RSA serving usages %v", got)
	}
}

func TestName(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	subj := nodeSubject("node-1")
	u := []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageClientAuth}
	name := func(k *ecdsa.PrivateKey, s pkix.Name, u []certv1.KeyUsage) string {
		t.Helper()
		n, err := Name(k.Public(), s, u)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	a := name(k1, subj, u)
	if b := name(k1, subj, slices.Clone(u)); a != b {
		t.Errorf("same inputs: %q then %q", a, b)
	}
	// DNS-1123 subdomain: accepted by every API server.
	if !regexp.MustCompile(`^node-csr-[a-z2-7]{52}$`).MatchString(a) {
		t.Errorf("name %q", a)
	}
	for what, other := range map[string]string{
		"key":          name(k2, subj, u),
		"usages":       name(k1, subj, []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageServerAuth}),
		"common name":  name(k1, nodeSubject("node-2"), u),
		"organization": name(k1, pkix.Name{CommonName: subj.CommonName, Organization: []string{"system:other"}}, u),
		// The delimiter keeps field boundaries: CN "ab" O "c" is not CN "a" O "bc".
		"boundaries": name(k1, pkix.Name{CommonName: subj.CommonName + "s", Organization: []string{"ystem:nodes"}}, u),
	} {
		if other == a {
			t.Errorf("different %s, same name %q", what, a)
		}
	}
	if _, err := Name(struct{}{}, subj, u); err == nil {
		t.Error("Name of an unknown key type: no error")
	}
}
