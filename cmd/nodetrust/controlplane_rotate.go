package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/apiserver"
)

func init() {
	registerCP(&command{
		name: "rotate",
		summary: "Rotate the cluster CA (through the running control plane's admin API) or the etcd CA (on the data folder's files): " +
			"start makes a new CA, complete moves to the next phase, rollback goes back to the old CA, status shows the phase, the CAs and the nodes left on the old one. See docs/rotation.md.",
		usage:   "start|status|complete|rollback [--ca cluster|etcd] [--data-dir DIR | --kubeconfig FILE] [--json]",
		example: "nodetrust controlplane rotate start --data-dir /var/lib/nodetrust-cp && nodetrust controlplane rotate status --data-dir /var/lib/nodetrust-cp",
		run:     runControlplaneRotate,
	})
}

func runControlplaneRotate(ctx context.Context, env *cmdEnv, args []string) error {
	fs := subFlagSet("rotate", env)
	dataDir := fs.String("data-dir", "", "control plane data folder (its admin.kubeconfig for --ca cluster, its files for --ca etcd)")
	kc := fs.String("kubeconfig", "", "admin kubeconfig (instead of --data-dir; --ca cluster only)")
	which := fs.String("ca", "cluster", "which CA: cluster (nodes, API, tunnels) or etcd")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	verb, extra, err := verbArgs(fs, env, args, "start", "status", "complete", "rollback")
	if err != nil {
		return err
	}
	if extra != "" {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, extra)
	}
	var st apiserver.RotationStatus
	switch *which {
	case "cluster":
		path := *kc
		if path == "" {
			if *dataDir == "" {
				return fmt.Errorf("%w: --data-dir or --kubeconfig is required", errUsage)
			}
			path = controlplane.Paths{DataDir: *dataDir}.AdminKubeconfig()
		}
		cfg, err := loadAdminConfig(path)
		if err != nil {
			return err
		}
		if verb == "status" {
			err = adminCall(ctx, cfg, "GET", "rotation", nil, &st)
		} else {
			err = adminCall(ctx, cfg, "POST", "rotation/"+verb, nil, &st)
		}
		if err != nil {
			return err // the API's message names the step and the phase
		}
	case "etcd":
		if *dataDir == "" {
			return fmt.Errorf("%w: --ca etcd acts on the data folder's files: --data-dir is required", errUsage)
		}
		if st, err = controlplane.RotateEtcd(controlplane.EtcdRotateOptions{DataDir: *dataDir, Action: verb}); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: --ca %q: want cluster or etcd", errUsage, *which)
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printRotation(env.stdout, st)
	return nil
}

// printRotation writes st in words.
func printRotation(w io.Writer, st apiserver.RotationStatus) {
	fmt.Fprintf(w, "%s CA rotation: phase %s (generation %d)\n", st.CA, st.Phase, st.Generation)
	fmt.Fprintf(w, "active CA (signs now): %s\n", st.Active)
	fmt.Fprintf(w, "trust bundle (%d CA%s, active first):\n", len(st.Bundle), plural(len(st.Bundle)))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, ca := range st.Bundle {
		mark := " "
		if ca.Active {
			mark = "*"
		}
		nodes := ""
		if st.CA == "cluster" {
			nodes = fmt.Sprintf("%d node%s", ca.Nodes, plural(ca.Nodes))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\tuntil %s\t%s\n", mark, ca.Pin, ca.Subject, ca.NotAfter.Format("2006-01-02"), nodes)
	}
	tw.Flush()
	if st.CA == "cluster" {
		fmt.Fprintf(w, "nodes: %d with a client certificate, %d still on a CA other than the active one\n", st.Nodes, st.NodesNotOnActive)
	}
	fmt.Fprintln(w, "next: "+nextStep(st))
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// nextStep says what the operator can do in st's phase.
func nextStep(st apiserver.RotationStatus) string {
	flag := ""
	if st.CA == "etcd" {
		flag = " --ca etcd"
	}
	switch st.Phase {
	case "idle":
		return "nothing to do; 'rotate start" + flag + "' begins a rotation"
	case "update-clients":
		if st.CA == "cluster" {
			return fmt.Sprintf("waiting for %d node%s to renew under the new CA (moves to update-servers by itself); 'rotate complete' forces it, 'rotate rollback' goes back", st.NodesNotOnActive, plural(st.NodesNotOnActive))
		}
		return "'rotate complete --ca etcd' re-issues the etcd serving certificate under the new CA; 'rotate rollback --ca etcd' goes back"
	case "update-servers":
		return "'rotate complete" + flag + "' drops the old CA; 'rotate rollback" + flag + "' goes back"
	case "rollback":
		return "'rotate complete" + flag + "' drops the new CA"
	}
	return strings.TrimSpace("unknown phase " + st.Phase)
}
