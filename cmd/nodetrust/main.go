// Command nodetrust is the single binary of nodetrust: the node agent, the
// embedded GCE-compatible metadata server, the control plane and the demo,
// each as a subcommand.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand of nodetrust.
type command struct {
	name    string
	summary string
	usage   string // arguments after the command name
	example string
	run     func(ctx context.Context, env *cmdEnv, args []string) error
}

// cmdEnv is what a subcommand gets from main: its output streams.
type cmdEnv struct {
	stdout io.Writer
	stderr io.Writer
}

// errUsage marks an error in the command line; main exits 2 for it.
var errUsage = errors.New("usage error")

// exitError carries a specific exit code for an error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(runMain(ctx, &cmdEnv{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:]))
}

func runMain(ctx context.Context, env *cmdEnv, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(env.stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "nodetrust: unknown command %q; run 'nodetrust --help' for the list\n", args[0])
		return 2
	}
	err := c.run(ctx, env, args[1:])
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		fmt.Fprintf(env.stderr, "nodetrust %s: %v\n", c.name, err)
		return ee.code
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(env.stderr, "nodetrust %s: %v\n", c.name, err)
		return 2
	default:
		fmt.Fprintf(env.stderr, "nodetrust %s: %v\n", c.name, err)
		return 1
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "nodetrust brings GKE-style cluster trust to any fleet of VMs.")
	fmt.Fprintln(w, "\nUsage: nodetrust <command> [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'nodetrust <command> --help' for a command's flags and an example.")
}

// newFlagSet returns a flag set whose --help prints the command's usage,
// flags and example.
func newFlagSet(c *command, env *cmdEnv) *flag.FlagSet {
	fs := flag.NewFlagSet("nodetrust "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parseFlags prints usage itself, to the right stream
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "%s\n\nUsage: nodetrust %s %s\n", c.summary, c.name, c.usage)
		var n int
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(out, "\nFlags:")
			fs.PrintDefaults()
		}
		if c.example != "" {
			fmt.Fprintf(out, "\nExample:\n  %s\n", c.example)
		}
	}
	return fs
}

// parseFlags parses args, mapping bad flags to errUsage and --help to
// flag.ErrHelp (after printing usage to stdout).
func parseFlags(fs *flag.FlagSet, env *cmdEnv, args []string) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(env.stdout)
		fs.Usage()
		return flag.ErrHelp
	}
	if err != nil {
		return fmt.Errorf("%w: %v (see --help)", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return nil
}
