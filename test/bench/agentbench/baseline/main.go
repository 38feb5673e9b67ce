// Command baseline is agentbench's baseline process, a minimal Go program
// built and started by agentbench so that the agent's process is compared
// with the least a Go process can do:
//
//	baseline sleep             sleep until SIGTERM or SIGINT (idle memory and CPU)
//	baseline https URL CAFILE  one HTTPS GET of URL trusting CAFILE, with the
//	                           agent's TLS and HTTP settings, then exit 0
//	                           (process start-up + TLS handshake + one round trip)
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	switch {
	case len(os.Args) == 2 && os.Args[1] == "sleep":
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
	case len(os.Args) == 4 && os.Args[1] == "https":
		if err := get(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "baseline:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: baseline sleep | baseline https URL CAFILE")
		os.Exit(2)
	}
}

func get(url, caFile string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return fmt.Errorf("%s holds no certificate", caFile)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
