package main

import (
	"context"
	"fmt"
	"runtime"

	"github.com/nodetrust/nodetrust/internal/version"
)

func init() {
	register(&command{
		name:    "version",
		summary: "Print the nodetrust version.",
		example: "nodetrust version",
		run: func(ctx context.Context, env *cmdEnv, args []string) error {
			fs := newFlagSet(commands["version"], env)
			if err := parseFlags(fs, env, args); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "nodetrust %s %s/%s %s\n", version.String(), runtime.GOOS, runtime.GOARCH, runtime.Version())
			return nil
		},
	})
}
