package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// helloBody is the baseline's answer, 10 bytes like the metadata value.
var helloBody = []byte("Hello, Go\n")

// serveHello is the baseline server, run in its own process: plain net/http
// answering every GET with helloBody. A request with wait_for_change in its
// query is a long-poll the plain way, a handler goroutine blocked until
// SIGHUP (or 120 s); GET /parked says how many are blocked.
func serveHello(addr string) {
	var (
		mu      sync.Mutex
		changed = make(chan struct{})
		parked  atomic.Int64
	)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			mu.Lock()
			close(changed)
			changed = make(chan struct{})
			mu.Unlock()
		}
	}()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/parked" {
			w.Write(strconv.AppendInt(nil, parked.Load(), 10))
			return
		}
		if r.URL.RawQuery != "" && r.URL.Query().Has("wait_for_change") {
			mu.Lock()
			ch := changed
			mu.Unlock()
			parked.Add(1)
			t := time.NewTimer(120 * time.Second)
			select {
			case <-ch:
			case <-t.C:
			case <-r.Context().Done():
			}
			t.Stop()
			parked.Add(-1)
		}
		w.Header()["Content-Type"] = []string{"text/plain; charset=utf-8"}
		w.Write(helloBody)
	})
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	term := make(chan os.Signal, 1)
	signal.Notify(term, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-term
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "hello server:", err)
		os.Exit(1)
	}
}
