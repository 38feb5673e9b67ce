package metadata_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	gcemd "cloud.google.com/go/compute/metadata"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/metadata"
)

// The real Go client, cloud.google.com/go/compute/metadata, pointed at the
// server with GCE_METADATA_HOST, as host processes and pods use it.

var errStop = errors.New("stop")

func gceClients(t *testing.T, d *metadata.Data) (*testServer, *gcemd.Client, *gcemd.Client) {
	t.Helper()
	ts := startServer(t, metadata.Config{}, d)
	t.Setenv("GCE_METADATA_HOST", ts.addr)
	return ts, gcemd.NewClient(client(t, hostAddr)), gcemd.NewClient(client(t, podAddr))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGCEClientOnGCE(t *testing.T) {
	ts, host, pod := gceClients(t, loadSample(t))
	// With GCE_METADATA_HOST set, OnGCE answers true without asking.
	assert.True(t, host.OnGCEWithContext(ctxT(t)))
	assert.True(t, pod.OnGCEWithContext(ctxT(t)))

	// What its probe checks when the variable is unset: GET / to the
	// metadata IP with no Metadata-Flavor header must answer with
	// Metadata-Flavor: Google.
	for _, src := range []string{hostAddr, podAddr} {
		resp, body := ts.do(t, client(t, src), http.MethodGet, "/", map[string]string{
			"Metadata-Flavor": "",
			"Host":            "169.254.169.254",
			"User-Agent":      "gcloud-golang/0.1",
		})
		assert.Equal(t, 200, resp.StatusCode)
		assert.Equal(t, "Google", resp.Header.Get("Metadata-Flavor"))
		assert.NotEmpty(t, body)
	}
	// Python's slow path asks metadata.google.internal.
	resp, _ := ts.do(t, client(t, podAddr), http.MethodGet, "/", map[string]string{"Metadata-Flavor": "", "Host": "metadata.google.internal"})
	assert.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "Google", resp.Header.Get("Metadata-Flavor"))
}

func TestGCEClientValues(t *testing.T) {
	_, host, pod := gceClients(t, loadSample(t))
	ctx := ctxT(t)
	for name, c := range map[string]*gcemd.Client{"host": host, "pod": pod} {
		t.Run(name, func(t *testing.T) {
			p, err := c.ProjectIDWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, "demo-project", p)
			n, err := c.NumericProjectIDWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, "123456789012", n)
			id, err := c.InstanceIDWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, "4520031799277581759", id)
			iname, err := c.InstanceNameWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, "node-1", iname)
			zone, err := c.ZoneWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, "europe-west1-b", zone)
			hn, err := c.HostnameWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, "node-1.c.demo-project.internal", hn)
			tags, err := c.InstanceTagsWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, []string{"nodetrust", "node"}, tags)
			ip, err := c.InternalIPWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, "10.128.0.2", ip)
			eip, err := c.ExternalIPWithContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, "203.0.113.10", eip)
			email, err := c.EmailWithContext(ctx, "")
			require.NoError(t, err)
			assert.Equal(t, "node-1@demo-project.iam.gserviceaccount.com", email)
			scopes, err := c.ScopesWithContext(ctx, "default")
			require.NoError(t, err)
			assert.Equal(t, []string{"https://www.googleapis.com/auth/cloud-platform"}, scopes)
			v, err := c.InstanceAttributeValueWithContext(ctx, "cluster-location")
			require.NoError(t, err)
			assert.Equal(t, "europe-west1", v)
			v, err = c.ProjectAttributeValueWithContext(ctx, "cluster-name")
			require.NoError(t, err)
			assert.Equal(t, "demo", v)
			pa, err := c.ProjectAttributesWithContext(ctx)
			require.NoError(t, err)
			assert.ElementsMatch(t, []string{"cluster-name", "enable-oslogin"}, pa)
			_, err = c.InstanceAttributeValueWithContext(ctx, "no-such-key")
			var nde gcemd.NotDefinedError
			assert.ErrorAs(t, err, &nde)
		})
	}

	v, err := host.InstanceAttributeValueWithContext(ctx, "kube-env")
	require.NoError(t, err)
	assert.Contains(t, v, "KUBELET_BOOTSTRAP_TOKEN: abcdef.0123456789abcdef")
	attrs, err := host.InstanceAttributesWithContext(ctx)
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{"cluster-location", "kube-env", "nodetrust-bootstrap-token"}, attrs)
	tok, err := host.GetWithContext(ctx, "instance/service-accounts/default/token")
	require.NoError(t, err)
	assert.Contains(t, tok, `"access_token":"ya29.sample-node-token"`)

	for _, key := range []string{"kube-env", "nodetrust-bootstrap-token", "KUBE-ENV"} {
		v, err = pod.InstanceAttributeValueWithContext(ctx, key)
		var nde gcemd.NotDefinedError
		require.ErrorAs(t, err, &nde, "pod read %s", key)
		assert.Empty(t, v)
	}
	attrs, err = pod.InstanceAttributesWithContext(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"cluster-location"}, attrs)
	_, err = pod.GetWithContext(ctx, "instance/service-accounts/default/token")
	var nde gcemd.NotDefinedError
	assert.ErrorAs(t, err, &nde)
	all, err := pod.GetWithContext(ctx, "?recursive=true")
	require.NoError(t, err)
	assert.Empty(t, leaks(all))
}

// TestGCEClientErrors: an unknown caller gets a 403, which the client
// reports as *Error (it retries only 5xx and 429).
func TestGCEClientErrors(t *testing.T) {
	gceClients(t, loadSample(t))
	stranger := gcemd.NewClient(client(t, unknownAddr))
	_, err := stranger.GetWithContext(ctxT(t), "instance/name")
	var e *gcemd.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 403, e.Code)
}

// subscription runs SubscribeWithContext in the background and reports each
// callback; the callback stops when stop is closed.
type subscription struct {
	values chan string
	oks    chan bool
	stop   chan struct{}
	done   chan struct{} // closed when Subscribe returned err
	err    error
}

func subscribe(t *testing.T, c *gcemd.Client, suffix string) *subscription {
	t.Helper()
	s := &subscription{values: make(chan string, 16), oks: make(chan bool, 16), stop: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(s.done)
		s.err = c.SubscribeWithContext(ctx, suffix, func(_ context.Context, v string, ok bool) error {
			s.values <- v
			s.oks <- ok
			select {
			case <-s.stop:
				return errStop
			default:
				return nil
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Error("Subscribe did not return")
		}
	})
	return s
}

func (s *subscription) next(t *testing.T) (string, bool) {
	t.Helper()
	select {
	case v := <-s.values:
		return v, <-s.oks
	case <-time.After(10 * time.Second):
		t.Fatal("no callback")
		return "", false
	}
}

func TestGCEClientSubscribe(t *testing.T) {
	ts, host, _ := gceClients(t, loadSample(t))
	s := subscribe(t, host, "instance/attributes/cluster-location")
	v, ok := s.next(t)
	assert.Equal(t, "europe-west1", v)
	assert.True(t, ok)

	ts.waitWatchers(t, 1)
	require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "europe-west4")))
	v, ok = s.next(t)
	assert.Equal(t, "europe-west4", v)
	assert.True(t, ok)

	// The callback stops the subscription by returning an error.
	close(s.stop)
	ts.waitWatchers(t, 1)
	require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "cluster-location", "europe-west9")))
	v, _ = s.next(t)
	assert.Equal(t, "europe-west9", v)
	select {
	case <-s.done:
		assert.ErrorIs(t, s.err, errStop)
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return the callback's error")
	}
	ts.waitWatchers(t, 0)
}

func TestGCEClientSubscribeDeleted(t *testing.T) {
	ts, host, _ := gceClients(t, loadSample(t))
	s := subscribe(t, host, "instance/attributes/cluster-location")
	v, _ := s.next(t)
	assert.Equal(t, "europe-west1", v)
	ts.waitWatchers(t, 1)
	d := loadSample(t)
	delete(d.Instances[0].Attributes, "cluster-location")
	require.NoError(t, ts.srv.SetData(d))
	v, ok := s.next(t)
	assert.False(t, ok, "a deleted value ends the subscription")
	assert.Empty(t, v)
	select {
	case <-s.done:
		assert.NoError(t, s.err)
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return")
	}
}

// TestGCEClientSubscribeConcealed: a pod subscribed to the attribute dump
// is called back for ordinary changes only.
func TestGCEClientSubscribeConcealed(t *testing.T) {
	ts, _, pod := gceClients(t, loadSample(t))
	s := subscribe(t, pod, "instance/attributes/?recursive=true")
	first, _ := s.next(t)
	assert.JSONEq(t, `{"cluster-location":"europe-west1"}`, first)
	ts.waitWatchers(t, 1)

	require.NoError(t, ts.srv.SetData(withAttr(loadSample(t), "kube-env", "rotated")))
	require.NoError(t, ts.srv.SetData(withAttr(withAttr(loadSample(t), "kube-env", "rotated"), "cluster-location", "europe-west4")))
	v, _ := s.next(t)
	assert.JSONEq(t, `{"cluster-location":"europe-west4"}`, v, "the first callback after the initial value must be the ordinary change")
	close(s.stop)
}
