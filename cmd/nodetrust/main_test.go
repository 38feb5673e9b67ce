package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := runMain(ctx, &cmdEnv{stdout: &out, stderr: &errb}, args)
	return code, out.String(), errb.String()
}

func TestEveryCommandHasHelpWithExample(t *testing.T) {
	for name := range commands {
		t.Run(name, func(t *testing.T) {
			code, out, _ := run(t, context.Background(), name, "--help")
			if code != 0 {
				t.Fatalf("%s --help exited %d", name, code)
			}
			if !strings.Contains(out, "Example:") || !strings.Contains(out, "nodetrust "+name) {
				t.Errorf("%s --help lacks an example:\n%s", name, out)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", nil, 2, ""},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown flag", []string{"version", "--bogus"}, 2, "-bogus"},
		{"metadata without data", []string{"metadata"}, 2, "--data is required"},
		{"signer with a backdate longer than half the lifetime", []string{"controlplane", "signer", "--data-dir", "/x", "--duration", "2m"}, 2, "--backdate 5m0s is more than half of --duration 2m0s"},
		{"signer with a lifetime under a minute", []string{"controlplane", "signer", "--data-dir", "/x", "--duration", "30s", "--backdate", "5s"}, 2, "below the 1m minimum"},
		{"metadata with missing file", []string{"metadata", "--data", "/nonexistent/md.yaml"}, 1, "/nonexistent/md.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := run(t, context.Background(), tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tt.code, errOut)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("stderr %q does not contain %q", errOut, tt.want)
			}
		})
	}
}

func TestMetadataCommandRejectsBadFileNamingLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "md.yaml")
	if err := os.WriteFile(p, []byte("project:\n  projectId: x\ninstances:\n  - name: a\n    hostAdresses: [127.0.0.1]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, context.Background(), "metadata", "--data", p)
	if code != 1 || !strings.Contains(errOut, p) || !strings.Contains(errOut, "line 5") || !strings.Contains(errOut, "hostAdresses") {
		t.Fatalf("exit %d, stderr %q: want the file, line 5 and the field named", code, errOut)
	}
}

func TestEverySubcommandHasHelpWithExample(t *testing.T) {
	var subs [][]string
	for name := range controlplaneSubs {
		subs = append(subs, []string{"controlplane", name})
	}
	subs = append(subs, []string{"agent", "reload"}, []string{"agent", "configured"}, []string{"metadata", "reload"})
	for _, sub := range subs {
		t.Run(strings.Join(sub, " "), func(t *testing.T) {
			code, out, errOut := run(t, context.Background(), append(sub, "--help")...)
			if code != 0 {
				t.Fatalf("%v --help exited %d: %s", sub, code, errOut)
			}
			if !strings.Contains(out, "Example:") || !strings.Contains(out, "nodetrust "+strings.Join(sub, " ")) {
				t.Errorf("%v --help lacks an example:\n%s", sub, out)
			}
		})
	}
}
