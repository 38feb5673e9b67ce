package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodetrust/nodetrust/metadata"
	"github.com/nodetrust/nodetrust/systemd"
)

// metadataListener returns the sockets systemd passed (FileDescriptorName=
// metadata, or unnamed ones), merged into one listener, or else a new
// listener on addr.
func metadataListener(addr string, log *slog.Logger) (net.Listener, error) {
	ls, err := systemd.Listeners("metadata")
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	if len(ls) > 0 {
		ln := systemd.Merge(ls)
		log.Info("using the sockets systemd passed; --listen is ignored", "sockets", len(ls), "addr", ln.Addr().String())
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	return ln, nil
}

// metadataReloads forwards SIGHUP to the reloader's trigger between
// RELOADING=1 and READY=1: it waits until the reload counter
// (nodetrust_metadata_reloads_total) moved, so READY=1 follows the reload
// that the signal asked for, and STATUS names a rejected file.
//
// With RUNTIME_DIRECTORY set it also writes metadataReloadFile there for
// `nodetrust metadata reload`.
func metadataReloads(ctx context.Context, hup <-chan os.Signal, trigger chan<- struct{}, d *systemd.Daemon, reg prometheus.Gatherer,
	dataPath string, ready func() string, log *slog.Logger) {
	resultPath := reloadResultPath("", metadataReloadFile)
	res := &reloadResult{PID: os.Getpid(), OK: true, At: time.Now()}
	write := func() {
		if resultPath == "" {
			return
		}
		if err := writeReloadResult(resultPath, res); err != nil {
			log.Warn("cannot write the reload result file; 'nodetrust metadata reload' will time out", "file", resultPath, "err", err)
		}
	}
	write()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		d.Reloading()
		before := reloadCounts(reg)
		select {
		case trigger <- struct{}{}:
		case <-ctx.Done():
			return
		}
		after := before
		deadline := time.Now().Add(30 * time.Second)
		for after.total() == before.total() && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond) // polls the counter; the reloader has no other signal of completion
			after = reloadCounts(reg)
		}
		status := ready()
		res = &reloadResult{PID: os.Getpid(), Generation: res.Generation + 1, OK: true, At: time.Now()}
		switch {
		case after["error"] > before["error"]:
			why := "see the log"
			if b, err := os.ReadFile(dataPath); err != nil {
				why = err.Error()
			} else if _, err := metadata.Parse(b); err != nil {
				why = err.Error()
			}
			res.OK, res.Error = false, fmt.Sprintf("%s: %s", dataPath, why)
			status += fmt.Sprintf(" (last reload of %s failed, old data in use: %s)", dataPath, why)
		case after["ok"] > before["ok"]:
			res.Applied = []string{dataPath}
		}
		write()
		d.Ready(status)
	}
}

type counts map[string]float64

func (c counts) total() float64 {
	var t float64
	for _, v := range c {
		t += v
	}
	return t
}

// reloadCounts reads nodetrust_metadata_reloads_total by result.
func reloadCounts(reg prometheus.Gatherer) counts {
	c := counts{}
	mfs, err := reg.Gather()
	if err != nil {
		return c
	}
	for _, mf := range mfs {
		if mf.GetName() != "nodetrust_metadata_reloads_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					c[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return c
}

var metadataReloadCmd = &command{
	name:    "metadata reload",
	summary: "Make a running metadata server re-read its data file, and wait until it has (ExecReload of nodetrust-metadata.service).",
	usage: "--pid PID [--timeout D]\n\n" +
		"Sends SIGHUP to PID and waits for its answer in $RUNTIME_DIRECTORY/" + metadataReloadFile + ".\n" +
		"Exit codes: 0 reloaded (or unchanged), 1 the file was rejected (the error is printed; the old data is still served)\n" +
		"or no answer in time, 2 bad command line.",
	example: "nodetrust metadata reload --pid $MAINPID",
}

func runMetadataReload(ctx context.Context, env *cmdEnv, args []string) error {
	fs := newFlagSet(metadataReloadCmd, env)
	pid := fs.Int("pid", 0, "process id of the metadata server (systemd: $MAINPID)")
	timeout := fs.Duration("timeout", 50*time.Second, "how long to wait")
	if err := parseFlags(fs, env, args); err != nil {
		return err
	}
	return signalAndWait(ctx, env, "metadata server", *pid, reloadResultPath("", metadataReloadFile), *timeout)
}
