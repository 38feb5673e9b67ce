package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nodetrust/nodetrust/metadata"
)

func init() {
	register(&command{
		name:    "demo",
		summary: "Run the all-in-one demo on loopback: the metadata server's host view next to a pod's concealed view.",
		example: "nodetrust demo",
		run:     runDemo,
	})
}

// demoHost and demoPod are the source addresses the demo's two callers use;
// any 127/8 address works on Linux without privileges.
const (
	demoHost = "127.0.0.1"
	demoPod  = "127.0.1.10"
)

// timeline prints demo events with the time since the start.
type timeline struct {
	w     io.Writer
	start time.Time
	mu    sync.Mutex
}

func (t *timeline) say(format string, a ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, "[%7.3fs] %s\n", time.Since(t.start).Seconds(), fmt.Sprintf(format, a...))
}

// bootstrapToken returns a random token in the kubeadm format.
func bootstrapToken() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 22)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:6]) + "." + string(b[6:])
}

func demoData(token string) *metadata.Data {
	return &metadata.Data{
		Project: metadata.Project{ProjectID: "demo-project", NumericProjectID: 123456789012,
			Attributes: map[string]string{"cluster-name": "demo"}},
		Instances: []metadata.Instance{{
			Name: "node-1", ID: 4520031799277581759, Zone: "europe-west1-b",
			Hostname: "node-1.c.demo-project.internal", MachineType: "e2-standard-2",
			Attributes: map[string]string{
				"cluster-location":          "europe-west1",
				"kube-env":                  "KUBELET_BOOTSTRAP_TOKEN: " + token + "\n",
				"nodetrust-bootstrap-token": token,
			},
			ServiceAccounts: map[string]metadata.ServiceAccount{"default": {
				Email: "node-1@demo-project.iam.gserviceaccount.com",
				Token: &metadata.Token{AccessToken: "ya29.demo-node-token"},
			}},
			HostAddresses: []string{demoHost},
			PodRanges:     []string{"127.0.1.0/24"},
		}},
	}
}

// demoClient is an HTTP client whose connections come from src.
func demoClient(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{DialContext: d.DialContext},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func demoGet(ctx context.Context, c *http.Client, base, suffix string) (int, string, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/computeMetadata/v1/"+suffix, nil)
	if err != nil {
		return 0, "", "", err
	}
	req.Header.Set("Metadata-Flavor", "Google")
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b), resp.Header.Get("ETag"), err
}

// mask hides every occurrence of secret, keeping the token id (public in
// the kubeadm format) so the reader sees which token it is.
func mask(s, secret string) string {
	id, _, _ := strings.Cut(secret, ".")
	return strings.ReplaceAll(s, secret, id+".<secret>")
}

func summarize(code int, body, secret string) string {
	if code != http.StatusOK {
		return fmt.Sprintf("%d %s", code, http.StatusText(code))
	}
	s := strings.TrimSpace(mask(body, secret))
	s = strings.ReplaceAll(s, "\n", " | ")
	limit := 48
	if strings.Contains(body, secret) {
		limit = 38
	}
	if len(s) > limit {
		s = s[:limit-3] + "..."
	}
	if strings.Contains(body, secret) {
		s += " [secret]"
	}
	return s
}

func runDemo(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(commands["demo"], env)
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	tl := &timeline{w: env.stdout, start: time.Now()}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	token := bootstrapToken()
	srv, err := metadata.NewServer(metadata.Config{}, demoData(token))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen on loopback: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { srv.Run(ctx, ln) })
	base := "http://" + ln.Addr().String()
	tl.say("metadata server for node-1 on %s; bootstrap token %s injected into its metadata", ln.Addr(), mask(token, token))
	tl.say("host view: callers from %s (node-1's own processes); pod view: callers from 127.0.1.0/24 (node-1's pods)", demoHost)

	host, pod := demoClient(demoHost), demoClient(demoPod)
	paths := []string{
		"instance/name",
		"instance/attributes/",
		"instance/attributes/nodetrust-bootstrap-token",
		"instance/attributes/kube-env",
		"instance/attributes/?recursive=true",
		"instance/service-accounts/default/token",
		"?recursive=true&alt=text",
	}
	fmt.Fprintf(env.stdout, "\n  %-46s %-50s %s\n", "GET /computeMetadata/v1/...", "host view ("+demoHost+")", "pod view ("+demoPod+")")
	leaks := 0
	for _, p := range paths {
		hc, hb, _, err := demoGet(ctx, host, base, p)
		if err != nil {
			return fmt.Errorf("host request %s: %w", p, err)
		}
		pc, pb, _, err := demoGet(ctx, pod, base, p)
		if err != nil {
			return fmt.Errorf("pod request %s: %w", p, err)
		}
		if strings.Contains(pb, token) || strings.Contains(pb, "kube-env") {
			leaks++
		}
		fmt.Fprintf(env.stdout, "  %-46s %-50s %s\n", p, summarize(hc, hb, token), summarize(pc, pb, token))
	}
	fmt.Fprintln(env.stdout)
	if leaks > 0 {
		return fmt.Errorf("the pod view leaked the secret in %d responses", leaks)
	}
	tl.say("the pod view never contained the token or the name kube-env")

	// Rotate the secret while a host and a pod long-poll the attributes.
	const watched = "instance/attributes/?recursive=true"
	_, _, hostTag, err := demoGet(ctx, host, base, watched)
	if err != nil {
		return err
	}
	_, _, podTag, err := demoGet(ctx, pod, base, watched)
	if err != nil {
		return err
	}
	type result struct {
		who  string
		code int
		body string
		err  error
		at   time.Time
	}
	results := make(chan result, 2)
	var start time.Time
	for _, w := range []struct {
		who string
		c   *http.Client
		tag string
	}{{"host", host, hostTag}, {"pod", pod, podTag}} {
		wg.Go(func() {
			code, body, _, err := demoGet(ctx, w.c, base, watched+"&wait_for_change=true&timeout_sec=2&last_etag="+w.tag)
			results <- result{w.who, code, body, err, time.Now()}
		})
	}
	time.Sleep(200 * time.Millisecond)
	newToken := bootstrapToken()
	start = time.Now()
	if err := srv.SetData(demoData(newToken)); err != nil {
		return err
	}
	tl.say("bootstrap token rotated to %s while host and pod long-poll %s", mask(newToken, newToken), watched)
	for range 2 {
		r := <-results
		if r.err != nil {
			return fmt.Errorf("%s long-poll: %w", r.who, r.err)
		}
		switch r.who {
		case "host":
			tl.say("host long-poll woke %v after the rotation, holding the new token: %v", r.at.Sub(start).Round(time.Microsecond), strings.Contains(r.body, newToken))
		default:
			tl.say("pod long-poll was not woken by the rotation; it ended at its 2 s timeout with an unchanged view (new token in it: %v)", strings.Contains(r.body, newToken))
		}
	}
	tl.say("done; the metadata server shuts down")
	return nil
}
