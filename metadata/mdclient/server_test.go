package mdclient_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// The client against nodetrust's own metadata server: the pairing the agent
// relies on.

func startServer(t *testing.T) (*metadata.Server, string) {
	t.Helper()
	d, err := metadata.LoadFile("../testdata/sample.yaml")
	require.NoError(t, err)
	srv, err := metadata.NewServer(metadata.Config{}, d)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return srv, ln.Addr().String()
}

func clientFrom(host, src string) *mdclient.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return mdclient.New(mdclient.Config{
		Host:       host,
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: d.DialContext}},
		RetryMax:   -1,
	})
}

func TestClientAgainstServer(t *testing.T) {
	_, host := startServer(t)
	ctx := context.Background()

	hostView := clientFrom(host, "127.0.0.1")
	v, err := hostView.InstanceAttribute(ctx, "nodetrust-bootstrap-token")
	require.NoError(t, err)
	require.Equal(t, "abcdef.0123456789abcdef", v)
	name, err := hostView.InstanceName(ctx)
	require.NoError(t, err)
	require.Equal(t, "node-1", name)

	podView := clientFrom(host, "127.0.1.9")
	_, err = podView.InstanceAttribute(ctx, "nodetrust-bootstrap-token")
	require.ErrorIs(t, err, mdclient.ErrNotDefined)
	v, err = podView.InstanceAttribute(ctx, "cluster-location")
	require.NoError(t, err)
	require.Equal(t, "europe-west1", v)
}

func TestClientWatchWakesOnServerChange(t *testing.T) {
	srv, host := startServer(t)
	c := clientFrom(host, "127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	stop := errors.New("stop")
	got := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, "instance/attributes/cluster-location", func(value, etag string) error {
			got <- value
			if value == "moved" {
				return stop
			}
			return nil
		})
	}()
	require.Equal(t, "europe-west1", <-got)

	d, err := metadata.LoadFile("../testdata/sample.yaml")
	require.NoError(t, err)
	d.Instances[0].Attributes["cluster-location"] = "moved"
	// The watch may not be parked yet; keep publishing until it is seen.
	require.Eventually(t, func() bool {
		require.NoError(t, srv.SetData(d))
		select {
		case v := <-got:
			require.Equal(t, "moved", v)
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	}, 5*time.Second, time.Millisecond)
	require.ErrorIs(t, <-done, stop)
}
