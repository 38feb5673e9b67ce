package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/apiserver"
	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
	"github.com/nodetrust/nodetrust/controlplane/instances"
)

func init() {
	registerCP(&command{
		name:    "token",
		summary: "Create, list or delete bootstrap tokens (kubeadm format) on a running control plane.",
		usage:   "create|list|delete [ID] [--data-dir DIR | --kubeconfig FILE] [--ttl D] [--description TEXT] [--group G]...",
		example: "nodetrust controlplane token create --data-dir /var/lib/nodetrust-cp --ttl 2h --description 'pool a'",
		run:     runControlplaneToken,
	})
	registerCP(&command{
		name:    "csr",
		summary: "List certificate signing requests, or approve or deny one, on a running control plane.",
		usage:   "list|approve|deny [NAME] [--data-dir DIR | --kubeconfig FILE] [--reason R] [--message M]",
		example: "nodetrust controlplane csr deny csr-x7k2p --data-dir /var/lib/nodetrust-cp --message 'unknown machine'",
		run:     runControlplaneCSR,
	})
	registerCP(&command{
		name:    "instance",
		summary: "Register, list or remove the IPs and DNS names a node owns (checked before kubelet serving certificates are approved).",
		usage:   "register|list|delete [NAME] [--ip IP]... [--dns NAME]... [--data-dir DIR | --kubeconfig FILE]",
		example: "nodetrust controlplane instance register node-7 --ip 10.0.0.7 --dns node-7.example.internal --data-dir /var/lib/nodetrust-cp",
		run:     runControlplaneInstance,
	})
}

// adminFlags adds --data-dir and --kubeconfig; the result builds the admin
// REST config.
func adminFlags(fs *flag.FlagSet) func() (*adminConfig, error) {
	dataDir := fs.String("data-dir", "", "control plane data folder, to use its admin.kubeconfig")
	kc := fs.String("kubeconfig", "", "admin kubeconfig (instead of --data-dir)")
	return func() (*adminConfig, error) {
		path := *kc
		if path == "" {
			if *dataDir == "" {
				return nil, fmt.Errorf("%w: --data-dir or --kubeconfig is required", errUsage)
			}
			path = controlplane.Paths{DataDir: *dataDir}.AdminKubeconfig()
		}
		return loadAdminConfig(path)
	}
}

// verbArgs splits "VERB [NAME] flags..." and parses the flags.
func verbArgs(fs *flag.FlagSet, env *cmdEnv, args []string, verbs ...string) (verb, name string, err error) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		verb, args = args[0], args[1:]
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := parseFlags(fs, env, args); err != nil {
		return "", "", err
	}
	for _, v := range verbs {
		if v == verb {
			return verb, name, nil
		}
	}
	return "", "", fmt.Errorf("%w: want one of %s, got %q", errUsage, strings.Join(verbs, ", "), verb)
}

// adminCall sends a JSON request to nodetrust's admin API.
func adminCall(ctx context.Context, cfg *adminConfig, method, path string, in, out any) error {
	return apiCall(ctx, cfg, method, "/apis/"+apiserver.AdminGroup+"/v1/"+path, in, out)
}

// apiCall sends a JSON request to the API and decodes the JSON answer;
// errors carry the API's metav1.Status message.
func apiCall(ctx context.Context, cfg *adminConfig, method, path string, in, out any) error {
	hc := cfg.Client
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(cfg.Host, "/")+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("call %s: %w", cfg.Host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode >= 300 {
		var st metav1.Status
		if json.Unmarshal(b, &st) == nil && st.Message != "" {
			return fmt.Errorf("%s %s: %s (HTTP %d)", method, path, st.Message, resp.StatusCode)
		}
		return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func runControlplaneToken(ctx context.Context, env *cmdEnv, args []string) error {
	fs := subFlagSet("token", env)
	cfgFn := adminFlags(fs)
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid; 0 for ever")
	desc := fs.String("description", "", "what the token is for")
	var groups stringList
	fs.Var(&groups, "group", "extra group system:bootstrappers:<x> (repeatable)")
	verb, name, err := verbArgs(fs, env, args, "create", "list", "delete")
	if err != nil {
		return err
	}
	cfg, err := cfgFn()
	if err != nil {
		return err
	}
	switch verb {
	case "create":
		var out apiserver.TokenCreateResponse
		if err := adminCall(ctx, cfg, "POST", "bootstraptokens", apiserver.TokenCreateRequest{TTL: ttl.String(), Description: *desc, ExtraGroups: groups}, &out); err != nil {
			return err
		}
		fmt.Fprintln(env.stdout, out.Token)
	case "list":
		var out []apiserver.TokenInfo
		if err := adminCall(ctx, cfg, "GET", "bootstraptokens", nil, &out); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tEXPIRES\tEXPIRED\tGROUPS\tDESCRIPTION")
		for _, t := range out {
			exp := "never"
			if !t.Expires.IsZero() {
				exp = t.Expires.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", t.ID, exp, t.Expired, strings.Join(append([]string{csrpolicy.BootstrapGroup}, t.ExtraGroups...), ","), t.Description)
		}
		tw.Flush()
	case "delete":
		if name == "" {
			return fmt.Errorf("%w: token delete needs the token ID", errUsage)
		}
		id, _, _ := strings.Cut(name, ".")
		if err := adminCall(ctx, cfg, "DELETE", "bootstraptokens/"+id, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "bootstrap token %s deleted\n", id)
	}
	return nil
}

func runControlplaneCSR(ctx context.Context, env *cmdEnv, args []string) error {
	fs := subFlagSet("csr", env)
	cfgFn := adminFlags(fs)
	reason := fs.String("reason", "", "condition reason (default AdminApproved or AdminDenied)")
	msg := fs.String("message", "", "condition message")
	verb, name, err := verbArgs(fs, env, args, "list", "approve", "deny")
	if err != nil {
		return err
	}
	cfg, err := cfgFn()
	if err != nil {
		return err
	}
	const csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
	if verb == "list" {
		var l certv1.CertificateSigningRequestList
		if err := apiCall(ctx, cfg, http.MethodGet, csrs, nil, &l); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tAGE\tSIGNERNAME\tREQUESTOR\tCONDITION")
		for _, c := range l.Items {
			var conds []string
			for _, cd := range c.Status.Conditions {
				conds = append(conds, string(cd.Type))
			}
			if len(c.Status.Certificate) > 0 {
				conds = append(conds, "Issued")
			}
			if len(conds) == 0 {
				conds = []string{"Pending"}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, time.Since(c.CreationTimestamp.Time).Round(time.Second), c.Spec.SignerName, c.Spec.Username, strings.Join(conds, ","))
		}
		return tw.Flush()
	}
	if name == "" {
		return fmt.Errorf("%w: csr %s needs the request name", errUsage, verb)
	}
	var c certv1.CertificateSigningRequest
	if err := apiCall(ctx, cfg, http.MethodGet, csrs+"/"+name, nil, &c); err != nil {
		return err
	}
	t, r := certv1.CertificateApproved, "AdminApproved"
	if verb == "deny" {
		t, r = certv1.CertificateDenied, "AdminDenied"
	}
	if *reason != "" {
		r = *reason
	}
	c.Status.Conditions = append(c.Status.Conditions, certv1.CertificateSigningRequestCondition{
		Type: t, Status: "True", Reason: r, Message: *msg, LastUpdateTime: metav1.Now(),
	})
	if err := apiCall(ctx, cfg, http.MethodPut, csrs+"/"+name+"/approval", &c, nil); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "certificatesigningrequest %s %sd\n", name, verb)
	return nil
}

func runControlplaneInstance(ctx context.Context, env *cmdEnv, args []string) error {
	fs := subFlagSet("instance", env)
	cfgFn := adminFlags(fs)
	var ips, dns stringList
	fs.Var(&ips, "ip", "IP address the node owns (repeatable)")
	fs.Var(&dns, "dns", "DNS name the node owns (repeatable)")
	verb, name, err := verbArgs(fs, env, args, "register", "list", "delete")
	if err != nil {
		return err
	}
	cfg, err := cfgFn()
	if err != nil {
		return err
	}
	switch verb {
	case "register":
		if name == "" {
			return fmt.Errorf("%w: instance register needs the node name", errUsage)
		}
		if err := adminCall(ctx, cfg, "POST", "instances", instances.Instance{Name: name, IPs: ips, DNSNames: dns}, nil); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "instance %s registered\n", name)
	case "list":
		var out []instances.Instance
		if err := adminCall(ctx, cfg, "GET", "instances", nil, &out); err != nil {
			return err
		}
		for _, in := range out {
			fmt.Fprintf(env.stdout, "%s\tips=%s\tdns=%s\n", in.Name, strings.Join(in.IPs, ","), strings.Join(in.DNSNames, ","))
		}
	case "delete":
		if name == "" {
			return fmt.Errorf("%w: instance delete needs the node name", errUsage)
		}
		if err := adminCall(ctx, cfg, "DELETE", "instances/"+name, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "instance %s deleted\n", name)
	}
	return nil
}
