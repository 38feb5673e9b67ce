package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/systemd"
)

// notifyServing runs serve, which serves on a listener already bound,
// between READY=1 (with status) and STOPPING=1.
func notifyServing(log *slog.Logger, status string, serve func() error) error {
	d := systemd.FromEnv(log)
	d.Ready(status)
	err := serve()
	d.Stopping()
	return err
}

// octalMode is a file mode flag written in octal ("0660").
type octalMode struct{ m fs.FileMode }

func (o *octalMode) String() string {
	if o.m == 0 {
		return ""
	}
	return fmt.Sprintf("%#o", o.m)
}

func (o *octalMode) Set(s string) error {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v&^0o777 != 0 {
		return fmt.Errorf("%q is not an octal mode such as 0660", s)
	}
	o.m = fs.FileMode(v)
	return nil
}

// signerSocketModeFlag adds --socket-mode to the signer's flags.
func signerSocketModeFlag(f *flag.FlagSet) *octalMode {
	m := &octalMode{}
	f.Var(m, "socket-mode", "mode of the signer socket once listening, e.g. 0660 so the API's user reaches it through the socket's group\n"+
		"(the group is the signer's: Group= in its unit); default: the signer's own 0600")
	return m
}

// notifySigner watches for the signer's socket at path (the one RunSigner
// is about to create, not a stale one), sets its mode when mode is set,
// and sends READY=1 then; stop sends STOPPING=1 and waits.
func notifySigner(ctx context.Context, log *slog.Logger, dataDir, path string, mode fs.FileMode) (stop func()) {
	if path == "" {
		path = controlplane.Paths{DataDir: dataDir}.SignerSocket()
	}
	d := systemd.FromEnv(log)
	var staleIno uint64
	if fi, err := os.Lstat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			staleIno = st.Ino
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond) // RunSigner has no hook for "listening"; the socket appearing is it
		defer t.Stop()
		for {
			fi, err := os.Lstat(path)
			if err == nil && fi.Mode()&fs.ModeSocket != 0 {
				if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Ino != staleIno {
					break
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		if mode != 0 {
			if err := os.Chmod(path, mode); err != nil && !errors.Is(err, fs.ErrNotExist) {
				log.Error("cannot set the signer socket's mode; the API may not reach it", "socket", path, "mode", fmt.Sprintf("%#o", mode), "err", err)
			}
		}
		d.Ready("signing approved CSRs on " + path)
	})
	return func() {
		cancel()
		wg.Wait()
		d.Stopping()
	}
}
