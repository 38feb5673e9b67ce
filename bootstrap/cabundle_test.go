package bootstrap_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/bootstrap"
	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/metadata/mdclient"
)

// startMetadataWithProject is startMetadata with project attributes too.
func startMetadataWithProject(t *testing.T, inst, project map[string]string) string {
	t.Helper()
	d := &metadata.Data{
		Project:   metadata.Project{ProjectID: "p", NumericProjectID: 1, Attributes: project},
		Instances: []metadata.Instance{{Name: "node-1", HostAddresses: []string{"127.0.0.1"}, Attributes: inst}},
	}
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
	return ln.Addr().String()
}

func TestCABundleSources(t *testing.T) {
	oldCA, newCA, fileCA := newPKI(t, "old"), newPKI(t, "new"), newPKI(t, "file")
	both := append(append([]byte(nil), newCA.caPEM...), oldCA.caPEM...)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	require.NoError(t, os.WriteFile(caFile, fileCA.caPEM, 0o644))
	env := kubeEnv("CA_CERT", b64(oldCA.caPEM))
	const attr = "nodetrust-ca-bundle"

	tests := []struct {
		name       string
		inst, proj map[string]string
		caFile     string
		pin        string
		want       []byte
		wantSource string
		wantErr    error
	}{
		{name: "caFile first", inst: map[string]string{attr: string(both), "kube-env": env}, caFile: caFile,
			want: fileCA.caPEM, wantSource: caFile},
		{name: "instance attribute before project and kube-env", inst: map[string]string{attr: string(newCA.caPEM), "kube-env": env},
			proj: map[string]string{attr: string(both)}, want: newCA.caPEM, wantSource: "instance/attributes/" + attr},
		{name: "project attribute before kube-env", inst: map[string]string{"kube-env": env},
			proj: map[string]string{attr: string(both)}, want: both, wantSource: "project/attributes/" + attr},
		{name: "project attribute in base64", proj: map[string]string{attr: b64(both)}, want: both, wantSource: "project/attributes/" + attr},
		{name: "empty attribute falls through to kube-env", inst: map[string]string{attr: "\n", "kube-env": env},
			want: oldCA.caPEM, wantSource: "instance/attributes/kube-env CA_CERT"},
		{name: "kube-env last", inst: map[string]string{"kube-env": env}, want: oldCA.caPEM, wantSource: "instance/attributes/kube-env CA_CERT"},
		{name: "pin of the old CA matches a two-CA bundle", proj: map[string]string{attr: string(both)},
			pin: bootstrap.SPKIPin(oldCA.caCert), want: both, wantSource: "project/attributes/" + attr},
		{name: "pin of the new CA matches too", proj: map[string]string{attr: string(both)},
			pin: bootstrap.SPKIPin(newCA.caCert), want: both, wantSource: "project/attributes/" + attr},
		{name: "pin matching no CA of the bundle", proj: map[string]string{attr: string(newCA.caPEM)},
			pin: bootstrap.SPKIPin(oldCA.caCert), wantErr: bootstrap.ErrPinMismatch},
		{name: "malformed attribute does not fall through", proj: map[string]string{attr: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
			inst: map[string]string{"kube-env": env}, wantErr: bootstrap.ErrBadCredential},
		{name: "attribute without a CA certificate", inst: map[string]string{attr: string(oldCA.leafOnlyCAFile)}, wantErr: bootstrap.ErrBadCredential},
		{name: "nothing anywhere", inst: map[string]string{"other": "x"}, wantErr: bootstrap.ErrNoCA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := startMetadataWithProject(t, tt.inst, tt.proj)
			cfg := bootstrap.Config{Metadata: mdclient.New(mdclient.Config{Host: host, RetryMax: -1}), CAFile: tt.caFile, CAPin: tt.pin}
			got, source, err := cfg.CABundle(context.Background())
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, string(tt.want), string(got))
			require.Equal(t, tt.wantSource, source)

			// Fetch takes its CA from the same place.
			tt.inst = withToken(tt.inst)
			host = startMetadataWithProject(t, tt.inst, tt.proj)
			cfg.Metadata = mdclient.New(mdclient.Config{Host: host, RetryMax: -1})
			cred, err := cfg.Fetch(context.Background())
			require.NoError(t, err)
			require.Equal(t, string(tt.want), string(cred.CABundle))
			require.Equal(t, tt.wantSource, cred.CASource)
		})
	}
}

func withToken(m map[string]string) map[string]string {
	out := map[string]string{"nodetrust-bootstrap-token": goodToken}
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestCheckPin(t *testing.T) {
	p := newPKI(t, "x")
	require.NoError(t, bootstrap.CheckPin(p.caPEM, bootstrap.SPKIPin(p.caCert)))
	require.ErrorIs(t, bootstrap.CheckPin(p.caPEM, "sha256:"+string(make([]byte, 0))), bootstrap.ErrInvalidConfig)
	require.ErrorIs(t, bootstrap.CheckPin(newPKI(t, "y").caPEM, bootstrap.SPKIPin(p.caCert)), bootstrap.ErrPinMismatch)
}
